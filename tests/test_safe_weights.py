"""Safe weights: model.safetensors next to the training checkpoint (loadable by timm and by vitpe), and clear
errors in timm's pretrained path for a file that is not a checkpoint, a truncated file, a pickle that would run
code, and a checkpoint of another patch size, width, depth or number of input channels (unless resampling the
patch kernel is asked for)."""
import json
import os

import pytest
import timm
import torch
from safetensors import safe_open
from timm.layers import resample_patch_embed

from helpers import Exploit
from vitpe.checkpoint import (FORMAT, WEIGHTS_FILE, WEIGHTS_FORMAT, describe_checkpoint, load_checkpoint, load_model,
                              save_checkpoints, save_weights, scheme_of)
from vitpe.errors import CheckpointError
from vitpe.models.convert import resample_patch

NAME = 'vitpe_micro_patch16_rope_mixed_64'
X = torch.randn(2, 3, 64, 64)


def pretrained(path, name=NAME, overlay=None, **kwargs):
    overlay = dict(file=str(path), **(overlay or {}))
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def ckpt_of(model, **extra):
    return {'format': FORMAT, 'model': model.state_dict(), 'model_name': NAME, 'model_kwargs': {'depth': 2},
            'img_size': 64, 'num_classes': 7, 'classes': list('abcdefg'), 'epoch': 3, 'val_acc': 0.5, **extra}


def test_best_weights_are_written_as_safetensors_and_load_in_timm_and_vitpe(tmp_path):
    model = timm.create_model(NAME, depth=2, num_classes=7).eval()
    save_checkpoints(ckpt_of(model), str(tmp_path), is_best=True)
    assert sorted(os.listdir(tmp_path)) == ['best.pth', 'last.pth', WEIGHTS_FILE]  # no temporary file left
    path = tmp_path / WEIGHTS_FILE
    with safe_open(str(path), 'pt') as f:
        meta = f.metadata()
        assert f.get_tensor('pos_enc.scheme').dtype == torch.uint8
    assert meta['vitpe_format'] == WEIGHTS_FORMAT and json.loads(meta['model_kwargs']) == {'depth': 2}
    # the head is kept when the overlay says how many classes the file has (timm drops it otherwise)
    loaded = pretrained(path, overlay=dict(num_classes=7), depth=2, num_classes=7)
    assert scheme_of(loaded.state_dict()) == 'rope_mixed'
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)
    again, ckpt = load_model(str(path))  # name, arguments and classes from the header
    assert ckpt['format'] == WEIGHTS_FORMAT and ckpt['classes'] == list('abcdefg') and ckpt['num_classes'] == 7
    with torch.no_grad():
        torch.testing.assert_close(again(X), model(X), rtol=0, atol=0)
    info = describe_checkpoint(str(path))  # python -m vitpe.checkpoint model.safetensors
    assert (info['scheme'], info['epoch'], info['val_acc'], info['format']) == ('rope_mixed', 4, 0.5, WEIGHTS_FORMAT)


def test_safetensors_are_rewritten_only_for_a_new_best(tmp_path):
    model = timm.create_model(NAME, depth=2, num_classes=7)
    save_checkpoints(ckpt_of(model), str(tmp_path), is_best=True)
    first = (tmp_path / WEIGHTS_FILE).read_bytes()
    with torch.no_grad():
        model.head.bias.add_(1)
    save_checkpoints(ckpt_of(model, epoch=4), str(tmp_path), is_best=False)
    assert (tmp_path / WEIGHTS_FILE).read_bytes() == first and load_checkpoint(str(tmp_path / 'last.pth'))['epoch'] == 4
    save_checkpoints(ckpt_of(model, epoch=5), str(tmp_path), is_best=True)
    assert load_checkpoint(str(tmp_path / WEIGHTS_FILE))['model']['head.bias'].equal(model.head.bias.detach())


def test_a_safetensors_file_without_vitpe_header_is_named_as_such(tmp_path):
    path = tmp_path / 'plain.safetensors'
    save_weights({'w': torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"safetensors file without vitpe's header \(vitpe_format None"):
        load_checkpoint(str(path))


def truncated(tmp_path, suffix):
    model = timm.create_model(NAME)
    path = tmp_path / f'whole{suffix}'
    if suffix == '.safetensors':
        save_weights(model.state_dict(), str(path), {'vitpe_format': WEIGHTS_FORMAT})
    else:
        torch.save(ckpt_of(model), path)
    cut = tmp_path / f'cut{suffix}'
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    return cut


@pytest.mark.parametrize('suffix,message', [('.pth', 'could not be read as a torch file'),
                                            ('.safetensors', r'could not be read as a safetensors file \(truncated')])
def test_truncated_files_are_clear_errors_in_both_paths(tmp_path, suffix, message):
    cut = truncated(tmp_path, suffix)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(cut))
    with pytest.raises(ValueError, match='pretrained file: .*' + message):
        pretrained(cut)


@pytest.mark.parametrize('content,message', [
    (b'hello, not a checkpoint', 'could not be read as a torch file'),
    ([torch.zeros(3)], r'holds no state dict \(a list\); expected a dict of tensors'),
    ({'epoch': 3, 'note': 'x'}, r"holds no state dict \(a dict with keys \['epoch', 'note'\]\)"),
])
def test_not_a_checkpoint_is_a_clear_error_in_timms_path(tmp_path, content, message):
    path = tmp_path / 'file.pth'
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match='pretrained file: .*' + message):
        pretrained(path)
    with pytest.raises(ValueError, match=r"pretrained file '.*missing.pth' does not exist"):
        pretrained(tmp_path / 'missing.pth')


def test_a_pickle_that_would_run_code_never_runs_in_timms_path(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'evil.pth'
    torch.save({'model': timm.create_model(NAME).state_dict(), 'hook': Exploit(str(marker))}, path)
    with pytest.raises(ValueError, match=r'holds pickled Python objects \(io.open\)'):
        pretrained(path)
    assert not marker.exists()
    with pytest.raises(RuntimeError, match='weights_only=True blocked'):  # timm 1.0.31's own loader refuses it too
        timm.models.load_state_dict(str(path))
    assert not marker.exists()
    # the file would run code if unpickled (read from its opcodes, nothing run): the test is not vacuous
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ['io.open']


@pytest.mark.parametrize('kwargs,message', [
    (dict(patch_size=8), r'checkpoint of patch size \(16, 16\) .*; this model\'s is \(8, 8\)\. To resample'),
    (dict(embed_dim=64, num_heads=2), r'checkpoint of width \(embed_dim\) 128; this model\'s is 64'),
    (dict(depth=3), r'checkpoint of depth 4 \(blocks\); this model has 3'),
    (dict(in_chans=1), None),  # three channels: timm's adapt_input_conv (summed), as every timm model
])
def test_another_trunk_is_a_clear_error(tmp_path, kwargs, message):
    source = timm.create_model('vitpe_micro_patch16_ape_64')
    path = tmp_path / 'w.safetensors'
    save_weights(source.state_dict(), str(path))
    if message:
        with pytest.raises(ValueError, match=message):
            pretrained(path, 'vitpe_micro_patch16_ape_64', **kwargs)
        return
    model = pretrained(path, 'vitpe_micro_patch16_ape_64', **kwargs)
    torch.testing.assert_close(model.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, keepdim=True))


def test_other_input_channels_than_three_are_refused(tmp_path):
    source = timm.create_model('vitpe_micro_patch16_ape_64', in_chans=2)
    path = tmp_path / 'w.safetensors'
    save_weights(source.state_dict(), str(path))
    with pytest.raises(ValueError, match=r'checkpoint for 2 input channels \(in_chans\); this model takes 3'):
        pretrained(path, 'vitpe_micro_patch16_ape_64')


def test_patch_kernel_is_resampled_when_asked(tmp_path):
    source = timm.create_model('vitpe_micro_patch16_ape_64')
    path = tmp_path / 'w.safetensors'
    save_weights(source.state_dict(), str(path))
    with resample_patch():
        model = pretrained(path, 'vitpe_micro_patch16_ape_64', patch_size=8)
    expected = resample_patch_embed(source.patch_embed.proj.weight.detach(), [8, 8], verbose=False)
    torch.testing.assert_close(model.patch_embed.proj.weight, expected, rtol=0, atol=0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match='To resample'):  # outside the block: refused again
        pretrained(path, 'vitpe_micro_patch16_ape_64', patch_size=8)
