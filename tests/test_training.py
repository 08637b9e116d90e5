"""train -> checkpoint -> resume -> sweep, end to end on the CPU; DDP with 2 processes; NaN loss and a kill
injected through callbacks; EMA, mixup and bf16; the deprecated entry points."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from vitpe.checkpoint import load_checkpoint
from vitpe.config import TrainConfig
from vitpe.errors import CheckpointError, TrainingError
from vitpe.eval import read_csv, sweep, write_results
from vitpe.training import Callback, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {'patch_size': 8, 'depth': 2, 'embed_dim': 32, 'num_heads': 2}

# runs tools/train.py with a callback that SIGKILLs the process after one epoch (as kill -9 would)
KILLED_RUNNER = '''
import importlib.util, os, signal, sys
sys.path.insert(0, {root!r})
from vitpe.training import Callback


class KillAfterEpoch(Callback):
    def on_epoch_end(self, epoch, row):
        if epoch == {epoch}:
            os.kill(os.getpid(), signal.SIGKILL)


spec = importlib.util.spec_from_file_location('train_cli', os.path.join({root!r}, 'tools', 'train.py'))
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)
sys.exit(cli.main(sys.argv[1:], callbacks=[KillAfterEpoch()]))
'''


class NanAtUpdate(Callback):
    """Turns the loss of one update into NaN."""

    def __init__(self, update):
        self.update = update

    def on_loss(self, loss, update):
        return loss * float('nan') if update == self.update else loss


@pytest.fixture
def nan_at_update():
    """A callback factory: ``nan_at_update(6)`` makes the loss of update 6 NaN."""
    return NanAtUpdate


@pytest.fixture
def killed_after_epoch(tmp_path):
    """``killed_after_epoch(2)``: a script that runs tools/train.py (same arguments) and dies by SIGKILL
    after epoch 2 is checkpointed."""
    def make(epoch):
        path = tmp_path / f'train_killed_after_{epoch}.py'
        path.write_text(KILLED_RUNNER.format(root=ROOT, epoch=epoch))
        return str(path)
    return make


def train_args(out, *extra, model='vitpe_tiny_patch16_rope_mixed_224', epochs=2):
    return ['--model', model, '--model-kwargs', json.dumps(TINY), '--data', 'synthetic:position', '--img-size', '32',
            '--train-samples', '64', '--val-samples', '32', '--batch-size', '16', '--epochs', str(epochs),
            '--warmup-steps', '2', '--output', str(out), '--quiet', *extra]


def run_script(args, script=os.path.join(ROOT, 'tools', 'train.py')):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=300)


def weights(path):
    return load_checkpoint(path)['model']


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def test_train_checkpoint_logs_and_sweep(tmp_path, tool):
    assert tool('train').main(train_args(tmp_path / 'run')) == 0
    ckpt = load_checkpoint(str(tmp_path / 'run' / 'last.pth'))
    assert ckpt['format'] == 'vitpe-train-2' and ckpt['config']['lr'] == 1e-3 and ckpt['config']['epochs'] == 2
    assert ckpt['model_name'] == 'vitpe_tiny_patch16_rope_mixed_224' and ckpt['img_size'] == 32
    assert ckpt['epoch'] == 1 and os.path.exists(tmp_path / 'run' / 'best.pth')
    rows = [json.loads(l) for l in open(tmp_path / 'run' / 'log.jsonl')]
    assert [r['epoch'] for r in rows] == [1, 2] and [r['updates'] for r in rows] == [4, 8]
    assert ckpt['val_acc'] == rows[-1]['val_acc']
    assert open(tmp_path / 'run' / 'log.csv').read().startswith('epoch,train_loss,val_loss,val_acc')
    records = sweep([str(tmp_path / 'run' / 'best.pth')], [24, 32, 48], ['none', 'pi'], samples=16, progress=False)
    assert [(r.res, r.strategy) for r in records] == [(24, 'none'), (32, 'none'), (48, 'none'),
                                                       (24, 'pi'), (32, 'pi'), (48, 'pi')]
    assert records[1].acc == pytest.approx(next(r for r in records if r.res == 32 and r.strategy == 'pi').acc)
    assert all(0 <= r.acc <= 1 and r.imgs_per_s > 0 and r.peak_mem_mb > 0 for r in records)
    paths = write_results(records, str(tmp_path / 'sweep'))
    table = open(paths['md']).read()
    assert '| run | rope_mixed | none | 32 |' in table and '*' in table
    assert os.path.getsize(paths['png']) > 1000
    header = open(paths['csv']).readline().strip().split(',')
    assert {'checkpoint', 'res', 'strategy', 'acc', 'imgs_per_s', 'peak_mem_mb'} <= set(header)
    # combinations: each part must apply to the scheme (rope_mixed has no learned table to interpolate)
    combos = sweep([str(tmp_path / 'run' / 'best.pth')], [48], ['logit+pi', 'ntk+bicubic'], samples=16,
                   progress=False)
    assert [r.strategy for r in combos] == ['pi+logit']
    with pytest.raises(ValueError, match="cannot be combined"):
        sweep([str(tmp_path / 'run' / 'best.pth')], [48], ['pi+ntk'], samples=16, progress=False)
    # the tool with --diagnostics: per-layer entropy and distance columns (depth 2) and the second plot
    out = tmp_path / 'diag'
    assert tool('eval_resolution').main(['--checkpoint', str(tmp_path / 'run' / 'best.pth'), '--resolutions', '32',
                                         '64', '--samples', '16', '--output', str(out), '--diagnostics']) == 0
    rows = read_csv(str(out / 'results.csv'))
    assert {'entropy_l1', 'entropy_norm_l1', 'distance_l1', 'distance_mean'} <= set(rows[0])
    assert (out / 'results.csv').read_text().startswith('# entropy_l<i>') and (out / 'diagnostics.png').exists()
    assert float(rows[0]['entropy_l0']) == pytest.approx(float(rows[0]['entropy_norm_l0']) * math.log(1 + 4 * 4))


def test_a_seed_reruns_bit_identically_and_seeds_differ(tmp_path):
    """The study's per-seed determinism on one machine: the same seed twice gives the same weights (the second
    run reads the scenes the first rendered, from the shared cache); another seed, other weights."""
    def weights(seed, name):
        train(TrainConfig(model='vitpe_tiny_patch16_ape_224', model_kwargs=TINY, img_size=32, train_samples=32,
                          val_samples=16, batch_size=16, epochs=1, warmup_steps=1, seed=seed,
                          output=str(tmp_path / name), quiet=True))
        return load_checkpoint(str(tmp_path / name / 'last.pth'))['model']
    first, again, other = weights(0, 'a'), weights(0, 'b'), weights(1, 'c')
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first['head.weight'], other['head.weight'])


def test_the_validation_accuracy_is_the_evaluation_loop_on_the_checkpoint(tmp_path):
    """Training's validation and the sweep's loop agree: the logged val_acc is recomputed from best.pth."""
    from vitpe.checkpoint import load_model
    from vitpe.data import build_dataset
    from vitpe.eval.loop import evaluate
    summary = train(TrainConfig(model='vitpe_tiny_patch16_ape_224', model_kwargs=TINY, img_size=32, train_samples=32,
                                val_samples=32, batch_size=16, epochs=1, warmup_steps=1, output=str(tmp_path),
                                quiet=True))
    model, _ = load_model(str(tmp_path / 'best.pth'))
    val = build_dataset('synthetic:position', 32, 'val', 32)
    loader = torch.utils.data.DataLoader(val, batch_size=16)
    again = evaluate(model, loader, torch.device('cpu'))
    assert again['n'] == 32 and again['acc'] == summary['val_acc'] == summary['best_acc']
    assert again['loss'] == pytest.approx(summary['val_loss'], rel=1e-6)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, killed_after_epoch):
    full = run_script(train_args(tmp_path / 'full', epochs=3))
    assert full.returncode == 0, full.stderr
    killed = run_script(train_args(tmp_path / 'cut', epochs=3), script=killed_after_epoch(2))
    assert killed.returncode == -9, killed.stderr[-2000:]  # died by SIGKILL
    assert load_checkpoint(str(tmp_path / 'cut' / 'last.pth'))['epoch'] == 1  # epochs 1 and 2 finished
    resumed = run_script(train_args(tmp_path / 'cut', '--resume', epochs=3))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(weights(tmp_path / 'full' / 'last.pth'), weights(tmp_path / 'cut' / 'last.pth'))
    rows = [json.loads(l) for l in open(tmp_path / 'cut' / 'log.jsonl')]
    assert [r['epoch'] for r in rows] == [1, 2, 3]


def test_ddp_two_processes_train_the_same_model(tmp_path):
    single = run_script(train_args(tmp_path / 'one', model='vitpe_tiny_patch16_ape_224'))
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          os.path.join(ROOT, 'tools', 'train.py'),
                          *train_args(tmp_path / 'two', model='vitpe_tiny_patch16_ape_224')],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert_same_weights(weights(tmp_path / 'one' / 'last.pth'), weights(tmp_path / 'two' / 'last.pth'), atol=1e-5)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, tool, nan_at_update):
    # epoch 2 (4 updates per epoch), step 2
    assert tool('train').main(train_args(tmp_path / 'run', epochs=3), callbacks=[nan_at_update(6)]) == 2
    out = capsys.readouterr().out
    assert 'loss is nan at epoch 2, step 2 (update 6)' in out and 'last.pth' in out
    assert load_checkpoint(str(tmp_path / 'run' / 'last.pth'))['epoch'] == 0


def test_finetune_at_another_resolution(tmp_path, tool):
    assert tool('train').main(train_args(tmp_path / 'a', model='vitpe_tiny_patch16_ape_224', epochs=1)) == 0
    finetune = ['--img-size', '48', '--data', 'synthetic:position', '--train-samples', '32', '--val-samples', '16',
                '--batch-size', '16', '--epochs', '1', '--output', str(tmp_path / 'b'), '--quiet']
    with pytest.warns(FutureWarning, match='--finetune is deprecated; use --initial-checkpoint'):
        assert tool('train').main(['--finetune', str(tmp_path / 'a' / 'best.pth'), *finetune]) == 0
    ckpt = load_checkpoint(str(tmp_path / 'b' / 'last.pth'))
    assert ckpt['img_size'] == 48 and ckpt['model']['pos_enc.table.weight'].shape == (1, 6, 6, 32)
    assert ckpt['config']['initial_checkpoint'] == str(tmp_path / 'a' / 'best.pth')


def test_ema_mixup_cutmix_and_bf16(tmp_path):
    cfg = TrainConfig(model='vitpe_tiny_patch16_rope_mixed_224', model_kwargs=TINY, img_size=32, train_samples=32,
                      val_samples=16, batch_size=16, epochs=1, warmup_steps=1, output=str(tmp_path), quiet=True,
                      model_ema=True, model_ema_decay=0.5, mixup=0.8, cutmix=1.0, smoothing=0.1, amp=True)
    summary = train(cfg)
    assert 0 <= summary['val_acc_ema'] <= 1 and torch.isfinite(torch.tensor(summary['train_loss']))
    ckpt = load_checkpoint(str(tmp_path / 'last.pth'))
    ema, model = ckpt['ema'], ckpt['model']
    assert ema is not None and [k.removeprefix('module.') for k in ema] == list(model)  # timm's ModelEmaV3 keys
    # an average over the updates (decay 0.5), not a copy of the final weights
    assert not torch.equal(ema['module.head.weight'], model['head.weight'])


def test_deprecated_entry_points_still_work(tmp_path):
    import argparse
    import vitpe.training as training
    with pytest.deprecated_call(match='parse_args is deprecated'):
        cfg = training.parse_args(train_args(tmp_path / 'run', epochs=1))
    assert isinstance(cfg, TrainConfig) and cfg.epochs == 1 and cfg.model_kwargs == TINY
    with pytest.deprecated_call(match='vitpe.training.main is deprecated'):
        assert training.main(train_args(tmp_path / 'run', epochs=1)) == 0
    namespace = argparse.Namespace(**{**cfg.to_dict(), 'output': str(tmp_path / 'ns'), 'config': None})
    with pytest.deprecated_call(match=r'train\(argparse.Namespace\) is deprecated'):
        assert train(namespace)['epoch'] == 1
    assert TrainingError is training.TrainingError and issubclass(CheckpointError, TrainingError)


def test_train_without_a_model_or_a_checkpoint_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match='needs a model'):
        train(TrainConfig(output=str(tmp_path)))


def test_bad_checkpoints_and_resolutions(tmp_path, tool):
    junk = tmp_path / 'junk.pth'
    torch.save({'weights': torch.zeros(3)}, junk)
    with pytest.raises(TrainingError, match='is not a vitpe training checkpoint'):
        load_checkpoint(str(junk))
    (tmp_path / 'text.pth').write_text('hello')
    with pytest.raises(TrainingError, match='could not be read as a torch file'):
        load_checkpoint(str(tmp_path / 'text.pth'))
    assert tool('train').main(train_args(tmp_path / 'run', epochs=1)) == 0
    with pytest.raises(ValueError, match=r"resolutions \[36\] are not divisible by the model's patch size \(8, 8\)"):
        sweep([str(tmp_path / 'run' / 'last.pth')], [32, 36], progress=False)


def test_resume_from_a_file_that_is_not_a_checkpoint_exits_2(tmp_path, capsys, tool):
    (tmp_path / 'x.pth').write_text('hello')
    assert tool('train').main(train_args(tmp_path / 'run', '--resume', str(tmp_path / 'x.pth'))) == 2
    assert 'could not be read as a torch file' in capsys.readouterr().out
