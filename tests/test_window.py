"""Window attention in the trunk (ViTDet): for every registered scheme (and every zoo variant of it), a window block
equals the scheme applied to each window as a grid of its own, and equals global attention when the window covers
the grid; a grid the window does not divide is padded and the padded keys are masked."""
import math

import pytest
import timm
import torch

import vitpe
from vitpe.layers.window import WindowLayout
from vitpe.pe import Grid, PosContext, get_pos_encoding_class
from vitpe.pe.strategy import attention_logit_scale

from helpers import micro

# every scheme with each of its image zoo entries' options, and iRPE on queries, keys and values (the value hook)
VARIANTS = [(name, dict(entry.options)) for name in vitpe.list_pos_encodings()
            for entry in get_pos_encoding_class(name).zoo if 'image' in entry.kinds] + [('irpe', dict(on='qkv'))]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items())}" for name, opts in VARIANTS]


def windowed(scheme, options, window, global_blocks=()):
    """The micro model (same weights as ``micro``) with window attention."""
    model = micro(scheme, pos_enc_args=options, window_size=window, global_blocks=global_blocks)
    ref = micro(scheme, pos_enc_args=options)  # abswin's default window table follows the window: copy it over
    ref.load_state_dict(model.state_dict())
    return model, ref


@pytest.mark.parametrize('scheme,options', VARIANTS, ids=IDS)
def test_window_covering_the_grid_is_global_attention(scheme, options):
    model, ref = windowed(scheme, options, (4, 5))
    x = torch.randn(2, 3, 64, 80)  # grid 4 x 5
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    assert all(blk.attn.windowed for blk in model.blocks)


def per_window_reference(attn, h, ctx, window, layer):
    """The attention of block ``layer`` over tokens h (B, p + N, C) when the scheme is applied to each window
    separately, as a grid of its own: the patch outputs of the windows that lie inside the grid, (B, N, C), NaN
    elsewhere."""
    pe, p, shape = ctx.pe, ctx.grid.num_prefix, ctx.grid.shape
    grid = Grid(window, p)
    wctx = PosContext(pe, grid, pe.prepare(grid, ctx.strategy, ctx.device), ctx.strategy,
                      attention_logit_scale(pe, grid, ctx.strategy), ctx.device)
    b, c = h.shape[0], h.shape[-1]
    patches = h[:, p:].reshape(b, *shape, c)
    out = torch.full((b, *shape, c), float('nan'))
    for r in range(0, shape[0] - window[0] + 1, window[0]):
        for col in range(0, shape[1] - window[1] + 1, window[1]):
            idx = (slice(None), slice(r, r + window[0]), slice(col, col + window[1]))
            tokens = torch.cat([h[:, :p], patches[idx].reshape(b, -1, c)], 1)
            out[idx] = attn.attend_tokens(tokens, wctx, layer)[:, p:].reshape(b, *window, c)
    return out.reshape(b, -1, c)


@pytest.mark.parametrize('size', [(64, 96), (80, 112)], ids=['divides', 'padded'])
@pytest.mark.parametrize('scheme,options', VARIANTS, ids=IDS)
def test_window_block_is_the_scheme_on_each_window(scheme, options, size):
    """Grid 4 x 6 (windows 2 x 3 divide it) and 5 x 7 (padded to 6 x 9: the full windows are compared)."""
    window = (2, 3)
    model, _ = windowed(scheme, options, window, global_blocks=(2,))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        tokens, ctx = model.embed(x)
        blk = model.blocks[1]
        h = blk.norm1(model.blocks[0](tokens, ctx))
        if ctx.pe.uses('attn_input'):  # the full grid's input to attention (LaPE), as the block does
            h_in = ctx.pe.attn_input(h, ctx, 1)
        else:
            h_in = h
        got = blk.attn(h, ctx, 1)
        want = per_window_reference(blk.attn, h_in, ctx, window, 1)
    inside = ~want[0, :, 0].isnan()
    assert inside.sum() == 4 * 6  # the 2 x 2 full windows
    torch.testing.assert_close(got[:, 1:][:, inside], want[:, inside], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('scheme,options', VARIANTS, ids=IDS)
def test_padded_keys_are_masked(scheme, options):
    """A grid of 5 x 7 with windows of 3 x 3 (padded to 6 x 9): whatever the padded tokens hold, the real tokens'
    outputs are the same, and the model runs at that size with global blocks in between."""
    model, _ = windowed(scheme, options, 3, global_blocks=(1, 3))
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        tokens, ctx = model.embed(x)
        layout, wctx = ctx.window.layout, ctx.window
        assert layout == WindowLayout((5, 7), (3, 3)) and layout.padded == (6, 9) and layout.num_windows == 6
        windows = layout.split(model.blocks[0].norm1(tokens), 1)
        pad = layout.padding(1)[None].expand(2, -1, -1).reshape(windows.shape[:2])
        noisy = windows + 5 * torch.randn_like(windows) * pad[..., None]
        attn = model.blocks[0].attn
        clean_out, noisy_out = attn.attend_tokens(windows, wctx, 0), attn.attend_tokens(noisy, wctx, 0)
        torch.testing.assert_close(clean_out[~pad], noisy_out[~pad], rtol=1e-4, atol=1e-5)
        out = model.forward_features(x)
    assert out.shape == (2, 1 + 35, 128) and out.isfinite().all()


def test_partition_round_trip_and_order():
    """Windows are batch major and row major inside (timm / detectron2 ``window_partition``); unpartition inverts
    it and drops the padding; a 3D grid works the same way."""
    layout = WindowLayout((5, 7), (3, 3))
    x = torch.arange(2 * 35, dtype=torch.float32).reshape(2, 35, 1)
    w = layout.partition(x)
    assert w.shape == (2 * 6, 9, 1)
    assert w[1, :, 0].tolist() == [3, 4, 5, 10, 11, 12, 17, 18, 19]  # image 0, window (0, 1)
    assert w[5, :, 0].tolist() == [27, 0, 0, 34, 0, 0, 0, 0, 0]  # image 0, window (1, 2): padded
    assert w[6, 0, 0] == 35  # image 1 starts at window 6
    torch.testing.assert_close(layout.unpartition(w), x)
    video = WindowLayout((3, 4, 5), (2, 2, 2))
    v = torch.randn(2, 60, 4)
    assert video.partition(v).shape == (2 * 2 * 2 * 3, 8, 4)
    torch.testing.assert_close(video.unpartition(video.partition(v)), v)
    assert layout.padding(1).shape == (6, 10) and layout.padding(1).sum() == 6 * 9 - 35


def test_lepe_conv_on_the_full_grid_crosses_window_borders():
    """conv_in_window=False convolves V over the full grid: the output changes only for tokens with a neighbour
    in another window (those on a window border)."""
    x = torch.randn(1, 3, 64, 96)
    outs = {}
    for inside in (True, False):
        model, _ = windowed('lepe', dict(conv_in_window=inside), (2, 3))
        with torch.no_grad():
            tokens, ctx = model.embed(x)
            outs[inside] = model.blocks[0].attn(model.blocks[0].norm1(tokens), ctx, 0)[0, 1:]
    changed = (outs[True] - outs[False]).abs().amax(-1).reshape(4, 6) > 1e-6
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing='ij')
    border = (rows % 2 == 0) & (rows > 0) | (rows % 2 == 1) & (rows < 3) | (cols % 3 == 0) & (cols > 0) | \
        (cols % 3 == 2) & (cols < 5)
    assert torch.equal(changed, border)


def test_abswin_window_table_aligns_with_the_attention_window():
    model = micro('abswin', window_size=(2, 2))
    assert tuple(model.pos_enc.pos_embed_window.shape[1:3]) == (2, 2)  # the default table is the window
    with pytest.raises(ValueError, match='not a multiple of the window table'):
        micro('abswin', pos_enc_args=dict(window_size=3), window_size=4)
    ok = micro('abswin', pos_enc_args=dict(window_size=2), window_size=4)  # 4 is a multiple of 2
    assert ok(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    aligned = micro('abswin', window_size=8)  # the default table (4: the micro grid) aligns with 8: kept
    assert tuple(aligned.pos_enc.pos_embed_window.shape[1:3]) == (4, 4)
    trained = micro('abswin')
    trained.load_state_dict(micro('abswin').state_dict())
    table = trained.pos_enc.pos_embed_window.detach().clone()
    with pytest.raises(ValueError, match='not a multiple'):  # a loaded table is never re-made
        trained.set_windows(3)
    trained.set_windows(8)
    assert torch.equal(trained.pos_enc.pos_embed_window, table)


def test_window_options_are_checked():
    with pytest.raises(ValueError, match='global_blocks'):
        micro('ape', global_blocks=(1,))
    with pytest.raises(ValueError, match='global_blocks'):
        micro('ape', window_size=2, global_blocks=(4,))
    with pytest.raises(ValueError, match='window_size'):
        micro('ape', window_size=(2, 0))
    model = timm.create_model('vitpe_micro_patch16_64', window_size=2, global_blocks=(1, 3))
    assert [blk.attn.windowed for blk in model.blocks] == [True, False, True, False]
    assert math.prod(model.window_size) == 4


@pytest.mark.parametrize('scheme,options', [('rope_mixed', {}), ('decomposed', {}), ('irpe', dict(on='qkv')),
                                            ('lepe', dict(conv_in_window=False))])
def test_windowed_model_traces(scheme, options):
    """FX (torchvision's create_feature_extractor) traces window blocks with padding; the graph equals eager."""
    from torchvision.models.feature_extraction import create_feature_extractor
    m = micro(scheme, pos_enc_args=options, img_size=(80, 112), window_size=3, global_blocks=(1,))
    fx = create_feature_extractor(m, return_nodes={'head': 'logits'})
    x = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        torch.testing.assert_close(fx(x)['logits'], m(x), rtol=0, atol=0)


def test_windowed_model_exports_with_dynamic_sizes():
    """torch.export with dynamic height and width (example 64 x 64: grid 4 x 4, padded to 6 x 6): the window counts
    and the padding follow the input. A program exported at a padded size refuses a size the window divides on
    an axis with a guard error (export at such a size for those)."""
    from vitpe.deploy import export_model
    m = micro('decomposed', window_size=3, global_blocks=(1,))
    program = export_model(m).module()
    with torch.no_grad():
        for size in ((80, 112), (112, 80), (160, 128)):
            x = torch.randn(1, 3, *size)
            torch.testing.assert_close(program(x), m(x), rtol=1e-4, atol=1e-5)
        with pytest.raises(AssertionError, match='Guard failed'):
            program(torch.randn(1, 3, 96, 112))
