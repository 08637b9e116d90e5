"""Checkpoints: tables resized on load by every loader, and a checkpoint of another scheme refused by name."""
import pytest
import timm
import torch

from vitpe.pe.common import resample_table


@pytest.mark.parametrize('name', ['vitpe_tiny_patch16_ape_224', 'vitpe_tiny_patch16_abswin_224',
                                  'vitpe_tiny_patch16_lape_224', 'vitpe_small_patch16_rope_mixed_ape_224',
                                  'vitpe_tiny_patch16_decomposed_224'])
def test_224_checkpoint_into_384_model_by_timm(name, tmp_path):
    small = timm.create_model(name, num_classes=10).eval()
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': small.state_dict(), 'epoch': 3}, path)
    big = timm.create_model(name, img_size=384, num_classes=10, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    table = getattr(big.pos_enc, 'table', None)
    if name.endswith('abswin_224'):
        assert big.pos_enc.pos_embed.shape[1:3] == (24, 24)
    if table is not None:
        assert table.weight.shape[1:3] == (24, 24)
        torch.testing.assert_close(table.weight.detach(), resample_table(small.pos_enc.table.weight.detach(), (24, 24)))
    # at the old grid, the resized table is resampled back for the old input: same head weights
    torch.testing.assert_close(big.head.weight, small.head.weight)
    assert torch.isfinite(big(torch.randn(1, 3, 384, 384))).all()


def test_224_checkpoint_into_384_model_by_load_state_dict():
    small = timm.create_model('vitpe_tiny_patch16_ape_224')
    big = timm.create_model('vitpe_tiny_patch16_ape_224', img_size=384)
    result = big.load_state_dict(small.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert big.pos_enc.table.weight.shape == (1, 24, 24, 192)


def test_set_input_size_resamples_tables_like_runtime():
    m = timm.create_model('vitpe_tiny_patch16_ape_224').eval()
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        before = m(x)
        m.set_input_size(img_size=320)
        after = m(x)
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize('src,dst', [('ape', 'sincos'), ('rope_axial', 'rope_mixed'), ('irpe', 'decomposed')])
def test_checkpoint_of_another_scheme_names_both(src, dst, tmp_path):
    sd = timm.create_model(f'vitpe_tiny_patch16_{src}_224').state_dict()
    model = timm.create_model(f'vitpe_tiny_patch16_{dst}_224')
    with pytest.raises(ValueError, match=f"trained with positional scheme '{src}' but this model uses '{dst}'"):
        model.load_state_dict(sd)
    path = tmp_path / 'ckpt.pth'
    torch.save(sd, path)
    with pytest.raises(ValueError, match=f"'{src}' but this model uses '{dst}'"):
        timm.create_model(f'vitpe_tiny_patch16_{dst}_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_foreign_checkpoint_without_converter(tmp_path):
    sd = timm.create_model('vit_tiny_patch16_224').state_dict()
    path = tmp_path / 'timm.pth'
    torch.save(sd, path)
    with pytest.raises(ValueError, match="not a vitpe checkpoint.*scheme 'irpe' has no foreign source"):
        timm.create_model('vitpe_tiny_patch16_irpe_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_timm_vit_into_rope_model_is_refused(tmp_path):
    sd = timm.create_model('vit_small_patch16_224').state_dict()
    path = tmp_path / 'timm.pth'
    torch.save(sd, path)
    with pytest.raises(ValueError, match="was built without ape=True"):
        timm.create_model('vitpe_small_patch16_rope_mixed_224', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
