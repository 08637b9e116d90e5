"""vitpe.checkpoint: atomic writes, safe reads (no unpickling of objects), a description, the RNG states, and
the training checkpoint written by main at 75d2ea8 (format vitpe-train-1) as a start for every reader."""
import json
import os
import random

import numpy as np
import pytest
import torch

from helpers import Exploit
from vitpe.checkpoint import (FORMAT, _numpy_rng_globals, describe_checkpoint, load_checkpoint, load_model, main,
                              rng_state, save_checkpoint, set_rng_state)
from vitpe.errors import CheckpointError, TrainingError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
OLD_TRAIN = os.path.join(DATA, 'compat_75d2ea8_train.pth')
OLD_OUTPUTS = os.path.join(DATA, 'compat_75d2ea8_schemes.pth')


def minimal(**extra):
    return {'format': FORMAT, 'model': {'w': torch.ones(2)}, 'model_name': 'm', 'model_kwargs': {}, 'img_size': 32,
            'num_classes': 4, **extra}


def old_outputs():
    return torch.load(OLD_OUTPUTS, map_location='cpu', weights_only=True)


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'last.pth')
    save_checkpoint(minimal(epoch=1), path)
    assert os.listdir(tmp_path) == ['last.pth']

    def dies_half_way(obj, f):
        open(f, 'wb').write(b'PK\x03\x04 half')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(minimal(epoch=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)['epoch'] == 1  # the previous checkpoint is intact


@pytest.mark.parametrize('content,message', [
    (None, r"checkpoint '.*nothing.pth' does not exist"),
    (b'hello', 'could not be read as a torch file'),
    ({'weights': torch.zeros(3)}, r"is not a vitpe training checkpoint \(a dict with keys \['weights'\]"),
    ({**minimal(), 'format': 'other-9'}, r"is not a vitpe training checkpoint \(format 'other-9'"),
    ({k: v for k, v in minimal().items() if k != 'model_name'}, 'is not a vitpe training checkpoint'),
    (torch.zeros(3), r'is not a vitpe training checkpoint \(a Tensor'),
])
def test_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / 'nothing.pth'
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(path))


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    import argparse
    path = tmp_path / 'objects.pth'
    torch.save({**minimal(), 'args': argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match=r'holds pickled Python objects \(argparse.Namespace\)'):
        load_checkpoint(str(path))
    marker = tmp_path / 'ran'
    torch.save({**minimal(), 'hook': Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r'holds pickled Python objects \(io.open\)'):
        load_checkpoint(str(path))
    assert not marker.exists()
    # the file would have run code (read from its opcodes, nothing unpickled): the test is not vacuous
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ['io.open']
    assert issubclass(CheckpointError, TrainingError)


def test_rng_state_round_trips_through_a_safe_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.standard_normal()  # numpy keeps a cached gaussian: part of the state
    path = str(tmp_path / 'rng.pth')
    save_checkpoint(minimal(rng=[rng_state()]), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []  # plain data and tensors only
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    set_rng_state(load_checkpoint(path)['rng'][0])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.testing.assert_close(again[0], expected[0])
    assert np.array_equal(again[1], expected[1]) and again[2] == expected[2]


def test_old_checkpoint_loads_safely_with_its_rng_states_converted():
    ckpt = load_checkpoint(OLD_TRAIN)
    assert ckpt['format'] == 'vitpe-train-1' and ckpt['epoch'] == 0 and ckpt['config']['warmup_steps'] == 1
    with torch.serialization.safe_globals(_numpy_rng_globals()):  # numpy's RNG state as saved, read safely
        old = torch.load(OLD_TRAIN, map_location='cpu', weights_only=True)['rng'][0]['numpy']
    state = ckpt['rng'][0]['numpy']
    assert state['key'].dtype == torch.int64 and np.array_equal(state['key'].numpy(), old[1].astype(np.int64))
    set_rng_state(ckpt['rng'][0])
    restored = np.random.get_state()
    assert np.array_equal(restored[1], old[1]) and restored[2] == old[2]


def test_old_checkpoint_through_the_sweeps_loader_gives_its_outputs():
    from vitpe.eval import load_model as sweep_load_model
    assert sweep_load_model is load_model
    model, ckpt = load_model(OLD_TRAIN)
    outputs = old_outputs()
    with torch.no_grad():
        torch.testing.assert_close(model(outputs['inputs']['32']), outputs['train_out_32'])


def test_describe_checkpoint_and_the_command(capsys):
    info = describe_checkpoint(OLD_TRAIN)
    assert {k: info[k] for k in ('format', 'model', 'scheme', 'img_size', 'epoch', 'num_classes', 'val_acc',
                                 'best_acc')} == {
        'format': 'vitpe-train-1', 'model': 'vitpe_tiny_patch16_rope_mixed_224', 'scheme': 'rope_mixed',
        'img_size': 32, 'epoch': 1, 'num_classes': 4, 'val_acc': 0.125, 'best_acc': 0.125}
    assert main([OLD_TRAIN]) == 0
    out = capsys.readouterr().out
    assert 'scheme: rope_mixed\n' in out and 'format: vitpe-train-1\n' in out
    assert main([OLD_TRAIN, 'missing.pth']) == 2
    assert "checkpoint 'missing.pth' does not exist" in capsys.readouterr().err


def old_run_args(out, *extra):
    """The options the old checkpoint was trained with (its 'args')."""
    return ['--data', 'synthetic:position', '--train-samples', '32', '--val-samples', '16', '--batch-size', '16',
            '--warmup-steps', '1', '--output', str(out), '--quiet', *extra]


def test_old_checkpoint_as_initial_checkpoint_and_resume_start(tmp_path, tool):
    cli = tool('train').main
    assert cli(old_run_args(tmp_path / 'ft', '--initial-checkpoint', OLD_TRAIN, '--img-size', '48',
                            '--epochs', '1')) == 0
    ft = load_checkpoint(str(tmp_path / 'ft' / 'last.pth'))
    assert ft['format'] == FORMAT and ft['img_size'] == 48 and ft['model_name'] == 'vitpe_tiny_patch16_rope_mixed_224'
    assert ft['model_kwargs'] == {'patch_size': 8, 'depth': 2, 'embed_dim': 16, 'num_heads': 2}
    weights = load_checkpoint(str(tmp_path / 'ft' / 'model.safetensors'))  # the best epoch's weights, safetensors
    best = load_checkpoint(str(tmp_path / 'ft' / 'best.pth'))
    assert weights['model_name'] == best['model_name'] and weights['img_size'] == 48
    assert sorted(weights['model']) == sorted(best['model'])
    assert all(weights['model'][k].equal(v) for k, v in best['model'].items())
    resume = tmp_path / 'resume'
    resume.mkdir()
    (resume / 'last.pth').write_bytes(open(OLD_TRAIN, 'rb').read())
    assert cli(old_run_args(resume, '--resume', '--epochs', '2')) == 0
    ckpt = load_checkpoint(str(resume / 'last.pth'))
    assert ckpt['format'] == FORMAT and ckpt['epoch'] == 1 and ckpt['num_updates'] == 4  # 2 old + 2 new
    assert [json.loads(l)['epoch'] for l in open(resume / 'log.jsonl')] == [2]
