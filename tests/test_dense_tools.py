"""tools/train_det.py and tools/train_seg.py on the built-in scenes with a micro backbone: checkpoints, logs and
metrics; resume gives the weights of an uninterrupted run; YAML config with command-line overrides; DDP."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vitpe.dense.train import read_checkpoint
from vitpe.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def args(out, *extra, epochs=1):
    return ['--model', 'vitpe_micro_patch16_rope_mixed_64', '--window-size', '2', '--global-blocks', '1', '3',
            '--img-size', '64', '--train-samples', '4', '--val-samples', '2', '--batch-size', '2', '--epochs',
            str(epochs), '--channels', '32', '--head-channels', '32', '--warmup-steps', '1', '--output', str(out),
            '--quiet', *extra]


def rows(out):
    return [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]


class Killed(Exception):
    pass


def test_train_seg_resume_matches_an_uninterrupted_run(tmp_path, tool, monkeypatch):
    import vitpe.dense.train as loop
    train_seg = tool('train_seg')
    assert train_seg.main(args(tmp_path / 'full', epochs=2)) == 0
    epoch_fn = loop.train_epoch

    def killed_in_epoch_2(run, epoch):
        if epoch == 1:
            raise Killed  # after epoch 1 was checkpointed
        return epoch_fn(run, epoch)
    monkeypatch.setattr(loop, 'train_epoch', killed_in_epoch_2)
    with pytest.raises(Killed):
        train_seg.main(args(tmp_path / 'cut', epochs=2))
    monkeypatch.setattr(loop, 'train_epoch', epoch_fn)
    assert read_checkpoint(str(tmp_path / 'cut' / 'last.pth'))['epoch'] == 0
    assert train_seg.main(args(tmp_path / 'cut', '--resume', epochs=2)) == 0
    full, cut = (read_checkpoint(str(tmp_path / r / 'last.pth')) for r in ('full', 'cut'))
    assert full['epoch'] == cut['epoch'] == 1 and full['num_updates'] == 4
    for k in full['model']:
        torch.testing.assert_close(full['model'][k], cut['model'][k], rtol=0, atol=0, msg=k)
    log = rows(tmp_path / 'cut')
    assert [r['epoch'] for r in log] == [1, 2] and 0 <= log[-1]['mIoU'] <= 1 and 0 <= log[-1]['pixel_acc'] <= 1
    assert [r['train_loss'] for r in log] == [r['train_loss'] for r in rows(tmp_path / 'full')]
    assert sorted(os.listdir(tmp_path / 'full' / 'data' / 'annotations' / 'val')) == ['val_000000.png',
                                                                                     'val_000001.png']


def test_train_det_with_a_yaml_config(tmp_path, tool):
    config = tmp_path / 'det.yaml'
    config.write_text('head: maskrcnn\nlr: 0.1\naugment: lsj\n')
    assert tool('train_det').main(['--config', str(config), '--lr', '1e-4', *args(tmp_path / 'det')]) == 0
    ckpt = read_checkpoint(str(tmp_path / 'det' / 'best.pth'))
    assert ckpt['config']['lr'] == 1e-4 and ckpt['config']['augment'] == 'lsj' and ckpt['config']['head'] == 'maskrcnn'
    row = rows(tmp_path / 'det')[0]
    assert {'bbox_AP', 'bbox_AP50', 'segm_AP', 'train_loss'} <= set(row) and 0 <= row['bbox_AP50'] <= 1
    assert open(tmp_path / 'det' / 'log.csv').readline().startswith('epoch,train_loss,bbox_AP')
    assert os.path.exists(tmp_path / 'det' / 'data' / 'annotations' / 'instances_train.json')


def test_a_bad_checkpoint_is_refused(tmp_path):
    torch.save({'format': 'other'}, tmp_path / 'x.pth')
    with pytest.raises(CheckpointError, match='not a vitpe dense training checkpoint'):
        read_checkpoint(str(tmp_path / 'x.pth'))


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    ddp = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          os.path.join(ROOT, 'tools', 'train_seg.py'), *args(tmp_path / 'two'), '--batch-size', '4'],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert [r['epoch'] for r in rows(tmp_path / 'two')] == [1]
    assert read_checkpoint(str(tmp_path / 'two' / 'last.pth'))['num_updates'] == 1  # 4 samples, global batch 4
