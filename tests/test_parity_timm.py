"""Numerical parity with timm: foreign checkpoints through timm's pretrained mechanism, and the
positional functions timm has."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingMixed, apply_rot_embed_cat
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias

import vitpe
from vitpe.pe import Grid
from vitpe.pe.common import coord_grid, resample_table
from vitpe.pe.decomposed import decomposed_bias
from vitpe.pe.rotary import rope_axial_angles, rope_axial_freqs, rope_mixed_angles

PAIRS = [
    ('vit_tiny_patch16_224', 'vitpe_tiny_patch16_ape_224'),
    ('vit_small_patch16_224', 'vitpe_small_patch16_ape_224'),
    ('vit_base_patch16_224', 'vitpe_base_patch16_ape_224'),
] + [
    (f'vit_{size}_patch16_{src}_224', f'vitpe_{size}_patch16_{dst}_224')
    for size in ('small', 'base')
    for src, dst in (('rope', 'rope_axial'), ('rope_ape', 'rope_axial_ape'), ('rope_mixed', 'rope_mixed'),
                     ('rope_mixed_ape', 'rope_mixed_ape'))
]


def _randomize(model):
    """Give every bias, LayerScale, table and frequency non-trivial values, so parity is not an accident."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ('bias', 'gamma', 'pos_embed', 'freqs', 'cls_token')):
                p.normal_(0, 0.5)
            if name.startswith('head.'):
                p.normal_(0, 0.5)


@pytest.mark.parametrize('src,dst', PAIRS)
def test_timm_checkpoint_parity(src, dst, tmp_path):
    ref = timm.create_model(src, dynamic_img_size=True).eval()
    _randomize(ref)
    path = tmp_path / 'timm.pth'
    torch.save(ref.state_dict(), path)
    model = timm.create_model(dst, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    for h, w in [(224, 224), (320, 320), (224, 288)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            feats_ref, feats = ref.forward_features(x), model.forward_features(x)
            logits_ref, logits = ref.forward_head(feats_ref), model.forward_head(feats)
        assert feats.shape == feats_ref.shape
        torch.testing.assert_close(feats, feats_ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(logits, logits_ref, atol=1e-4, rtol=0)
        assert logits_ref.std(0).mean() > 1e-2  # the inputs are told apart, so the comparison means something


def test_layer_scale_folds_into_a_model_without_it(tmp_path):
    ref = timm.create_model('vit_small_patch16_rope_mixed_224').eval()
    _randomize(ref)
    path = tmp_path / 'timm.pth'
    torch.save(ref.state_dict(), path)
    with_ls = timm.create_model('vitpe_small_patch16_rope_mixed_224', init_values=1e-5, pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(path))).eval()
    without = timm.create_model('vitpe_small_patch16_rope_mixed_224', pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert hasattr(with_ls.blocks[0].ls1, 'gamma') and not hasattr(without.blocks[0].ls1, 'gamma')
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(with_ls(x), ref(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(without(x), ref(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize('shape', [(14, 14), (10, 17)])
def test_rope_axial_matches_timm_rotary_cat(shape):
    head_dim = 64
    rope = RotaryEmbeddingCat(head_dim, temperature=100., in_pixels=False, grid_indexing='xy')
    ref = rope.get_embed(shape)  # (N, 2 * head_dim): sin | cos, interleaved layout
    ang = rope_axial_angles(coord_grid(shape), rope_axial_freqs(head_dim, 2, 100.))
    torch.testing.assert_close(ref[:, :head_dim], ang.sin().repeat_interleave(2, -1))
    torch.testing.assert_close(ref[:, head_dim:], ang.cos().repeat_interleave(2, -1))
    # and the rotation itself
    pe = vitpe.create_pos_encoding('rope_axial', dim=head_dim * 2, num_heads=2, depth=1, grid_size=shape)
    grid = Grid(shape, 0)
    q, k = torch.randn(2, 2, grid.num_patches, head_dim), torch.randn(2, 2, grid.num_patches, head_dim)
    ctx = vitpe.PosContext(pe, grid, pe.prepare(grid))
    q2, k2 = pe.qk(q, k, ctx, 0)
    torch.testing.assert_close(q2, apply_rot_embed_cat(q, ref))
    torch.testing.assert_close(k2, apply_rot_embed_cat(k, ref))


def test_rope_mixed_matches_timm_rotary_mixed():
    dim, heads, depth, shape = 128, 2, 3, (6, 9)
    ref = RotaryEmbeddingMixed(dim, depth, heads, temperature=10., grid_indexing='xy')
    emb = ref.get_embed(shape)  # (depth, heads, N, 2 * head_dim)
    ang = rope_mixed_angles(coord_grid(shape), ref.freqs.detach())
    torch.testing.assert_close(emb[..., :64], ang.sin().repeat_interleave(2, -1))
    torch.testing.assert_close(emb[..., 64:], ang.cos().repeat_interleave(2, -1))


def test_rope_mixed_init_matches_timm_distribution():
    """Same magnitudes and the phi / phi + pi/2 structure as timm's init_random_2d_freqs."""
    from timm.layers.pos_embed_sincos import init_random_2d_freqs
    from vitpe.pe.rotary import rope_mixed_init
    torch.manual_seed(3)
    ref = init_random_2d_freqs(64, 2, 4, temperature=10.)
    torch.manual_seed(3)
    ours = rope_mixed_init(64, 2, 4, 2, 10.)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize('q_size,table_len', [((8, 8), 15), ((6, 10), 15)])
def test_decomposed_matches_timm_sam(q_size, table_len):
    d = 16
    rel_h, rel_w = torch.randn(table_len, d), torch.randn(table_len, d)
    q = torch.randn(3, q_size[0] * q_size[1], d)
    ref = get_decomposed_rel_pos_bias(q, rel_h, rel_w, q_size, q_size)
    torch.testing.assert_close(decomposed_bias(q, [rel_h, rel_w], q_size), ref)


@pytest.mark.parametrize('new', [(20, 20), (12, 30)])
def test_resample_table_matches_timm(new):
    flat = torch.randn(1, 1 + 196, 32)
    ref = resample_abs_pos_embed(flat, new, old_size=(14, 14), num_prefix_tokens=1)
    ours = resample_table(flat[:, 1:].reshape(1, 14, 14, 32), new).flatten(1, 2)
    torch.testing.assert_close(ours, ref[:, 1:])


def test_abswin_matches_timm_hiera():
    """hiera ``_pos_embed`` with abs_win_pos_embed: interpolate the global table, tile the window table."""
    pe = vitpe.create_pos_encoding('abswin', dim=32, num_heads=2, depth=1, grid_size=(16, 16),
                                   window_size=(4, 4), global_size=(7, 7))
    g = pe.pos_embed.detach().permute(0, 3, 1, 2)  # hiera keeps NCHW
    w = pe.pos_embed_window.detach().permute(0, 3, 1, 2)
    ref = F.interpolate(g, size=(16, 16), mode='bicubic', antialias=True) + w.tile((4, 4))
    ref = ref.flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe.embedding((16, 16)), ref)


def test_sincos_is_mae_formula():
    dim, shape = 16, (3, 5)
    pos = vitpe.pe.common.sincos_embed(shape, dim)
    omega = 1. / 10000 ** (torch.arange(4) / 4.)
    r, c = 2, 3
    row = pos[r * 5 + c]
    torch.testing.assert_close(row, torch.cat([(c * omega).sin(), (c * omega).cos(),
                                               (r * omega).sin(), (r * omega).cos()]))
