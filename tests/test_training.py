"""train -> checkpoint -> resume -> sweep, end to end on the CPU; DDP with 2 processes; NaN loss; bad checkpoints."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vitpe.eval import sweep, write_results
from vitpe.training import TrainingError, load_checkpoint, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = json.dumps({'patch_size': 8, 'depth': 2, 'embed_dim': 32, 'num_heads': 2})


def train_args(out, *extra, model='vitpe_tiny_patch16_rope_mixed_224', epochs=2):
    return ['--model', model, '--model-kwargs', TINY, '--data', 'synthetic:position', '--img-size', '32',
            '--train-samples', '64', '--val-samples', '32', '--batch-size', '16', '--epochs', str(epochs),
            '--warmup-steps', '2', '--output', str(out), '--quiet', *extra]


def run_script(args, env=None, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), *args], env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def weights(path):
    return load_checkpoint(path)['model']


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def test_train_checkpoint_logs_and_sweep(tmp_path):
    assert main(train_args(tmp_path / 'run')) == 0
    ckpt = load_checkpoint(str(tmp_path / 'run' / 'last.pth'))
    assert ckpt['model_name'] == 'vitpe_tiny_patch16_rope_mixed_224' and ckpt['img_size'] == 32
    assert ckpt['epoch'] == 1 and os.path.exists(tmp_path / 'run' / 'best.pth')
    rows = [json.loads(l) for l in open(tmp_path / 'run' / 'log.jsonl')]
    assert [r['epoch'] for r in rows] == [1, 2]
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


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    full = run_script(train_args(tmp_path / 'full', epochs=3))
    assert full.returncode == 0, full.stderr
    killed = run_script(train_args(tmp_path / 'cut', epochs=3), env={'VITPE_FAULT_KILL_AFTER_EPOCH': '2'})
    assert killed.returncode != 0
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


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import vitpe.training as training
    monkeypatch.setattr(training, '_FAULT_NAN_AT_UPDATE', 6)  # epoch 2 (4 updates per epoch), step 2
    assert main(train_args(tmp_path / 'run', epochs=3)) == 2
    out = capsys.readouterr().out
    assert 'loss is nan at epoch 2, step 2 (update 6)' in out and 'last.pth' in out
    assert load_checkpoint(str(tmp_path / 'run' / 'last.pth'))['epoch'] == 0


def test_finetune_at_another_resolution(tmp_path):
    assert main(train_args(tmp_path / 'a', model='vitpe_tiny_patch16_ape_224', epochs=1)) == 0
    assert main(['--finetune', str(tmp_path / 'a' / 'best.pth'), '--img-size', '48', '--data', 'synthetic:position',
                 '--train-samples', '32', '--val-samples', '16', '--batch-size', '16', '--epochs', '1',
                 '--output', str(tmp_path / 'b'), '--quiet']) == 0
    ckpt = load_checkpoint(str(tmp_path / 'b' / 'last.pth'))
    assert ckpt['img_size'] == 48 and ckpt['model']['pos_enc.table.weight'].shape == (1, 6, 6, 32)


def test_config_file_with_cli_override(tmp_path):
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('model: vitpe_tiny_patch16_sincos_224\nepochs: 5\nimg_size: 32\nlr: 0.002\n')
    from vitpe.training import parse_args
    args = parse_args(['--config', str(cfg), '--epochs', '1'])
    assert args.model == 'vitpe_tiny_patch16_sincos_224' and args.epochs == 1 and args.lr == 0.002
    cfg.write_text('modle: x\n')
    with pytest.raises(ValueError, match=r"unknown keys \['modle'\]"):
        parse_args(['--config', str(cfg)])


def test_bad_checkpoints_and_resolutions(tmp_path):
    junk = tmp_path / 'junk.pth'
    torch.save({'weights': torch.zeros(3)}, junk)
    with pytest.raises(TrainingError, match='is not a vitpe training checkpoint'):
        load_checkpoint(str(junk))
    (tmp_path / 'text.pth').write_text('hello')
    with pytest.raises(TrainingError, match='could not be read as a torch file'):
        load_checkpoint(str(tmp_path / 'text.pth'))
    assert main(train_args(tmp_path / 'run', epochs=1)) == 0
    with pytest.raises(ValueError, match=r"resolutions \[36\] are not divisible by the model's patch size \(8, 8\)"):
        sweep([str(tmp_path / 'run' / 'last.pth')], [32, 36], progress=False)
