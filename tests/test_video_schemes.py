"""Each scheme's 3D form (T, H, W) against its formula, and the temporal strategies (pi_t, ntk_t, RIFLEx)."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vitpe
from vitpe.pe import Grid, PosContext, ResolutionStrategy
from vitpe.pe.common import grid_coords
from vitpe.pe.irpe import irpe_bucket_ids, piecewise_index


def make(name, grid_size=(2, 3, 4), dim=48, heads=2, depth=2, prefix=1, **opts):
    torch.manual_seed(0)
    pe = vitpe.create_pos_encoding(name, dim=dim, num_heads=heads, depth=depth, grid_size=grid_size,
                                   num_prefix_tokens=prefix, **opts)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_(0, 0.1)
    return pe


def context(pe, shape, prefix=1, strategy='none'):
    grid = Grid(tuple(shape), prefix)
    strategy = ResolutionStrategy.parse(strategy)
    return PosContext(pe, grid, pe.prepare(grid, strategy), strategy)


def cells(shape):
    """(t, r, c) of every token, row major."""
    return [(t, r, c) for t in range(shape[0]) for r in range(shape[1]) for c in range(shape[2])]


# ------------------------------------------------------------------------------------------------ formulas
def test_ape_full_and_separable():
    full = make('ape')
    assert full.table.weight.shape == (1, 2, 3, 4, 48)
    sep = make('ape', separable=True)
    assert sep.table.weight.shape == (1, 3, 4, 48) and sep.time_table.weight.shape == (1, 2, 48)
    out = sep.tokens(torch.zeros(1, 1 + 24, 48), context(sep, (2, 3, 4)))
    for i, (t, r, c) in enumerate(cells((2, 3, 4))):  # P[t, h, w] = S[h, w] + P_t[t]
        torch.testing.assert_close(out[0, 1 + i], sep.table.weight[0, r, c] + sep.time_table.weight[0, t])
    torch.testing.assert_close(out[0, 0], sep.table.prefix[0, 0])
    # another clip: the spatial table resampled in (H, W), the temporal one linearly in T
    out = sep.tokens(torch.zeros(1, 1 + 4 * 3 * 4, 48), context(sep, (4, 3, 4)))
    p_t = F.interpolate(sep.time_table.weight.transpose(1, 2), size=4, mode='linear').transpose(1, 2)[0]
    torch.testing.assert_close(out[0, 1 + 3 * 12 + 5], sep.table.weight[0, 1, 1] + p_t[3])
    with pytest.raises(ValueError, match="ape: separable=True is for video"):
        make('ape', grid_size=(3, 4), separable=True)


def test_sincos_3d_split_over_t_h_w():
    pe = make('sincos', dim=64, split=(8, 12, 12))
    pos = pe.prepare(Grid((2, 3, 4), 1)).pos[0]
    for i, (t, r, c) in enumerate(cells((2, 3, 4))):
        parts = []
        for p, n in ((c, 12), (r, 12), (t, 8)):  # last axis first, as MAE
            w = 1. / 10000 ** (torch.arange(n) / n)
            parts += [torch.sin(p * w), torch.cos(p * w)]
        torch.testing.assert_close(pos[i], torch.cat(parts))
    assert make('sincos', dim=64).split == (10, 11, 11)  # default: 32 frequencies, ceil(32/3) to h and w
    assert make('sincos', dim=48).split == (8, 8, 8)


def test_rope_axial_3d_angles():
    pe = make('rope_axial', dim=64, heads=2, split=(4, 6, 6))  # head_dim 32: 16 pairs
    rot = pe.prepare(Grid((2, 3, 4), 0)).rot
    for i, (t, r, c) in enumerate(cells((2, 3, 4))):
        ang = torch.cat([c / 100 ** (torch.arange(6) / 6), r / 100 ** (torch.arange(6) / 6),
                         t / 100 ** (torch.arange(4) / 4)])
        torch.testing.assert_close(rot[i], torch.polar(torch.ones(16), ang))


def test_rope_mixed_3d_angles_and_init():
    pe = vitpe.create_pos_encoding('rope_mixed', dim=64, num_heads=2, depth=2, grid_size=(2, 3, 4),
                                   num_prefix_tokens=1)
    f = pe.freqs.detach()  # (3 axes x, y, t; depth; heads; 16 pairs): chunks of 6, 6, 4 pairs
    assert f.shape == (3, 2, 2, 16) and pe.split == (4, 6, 6)
    # each chunk starts along a random direction; the three directions of a (layer, head) are orthonormal
    dirs = f[:, :, :, [0, 6, 12]].permute(1, 2, 3, 0)  # (layer, head, chunk, axis), magnitude 1 at k = 0
    torch.testing.assert_close(dirs @ dirs.transpose(-1, -2), torch.eye(3).expand(2, 2, 3, 3), atol=1e-5, rtol=0)
    mags = f[:, 0, 0].norm(dim=0)
    torch.testing.assert_close(mags, torch.cat([10 ** (-torch.arange(n) / n) for n in (6, 6, 4)]))
    q = torch.randn(1, 2, 1 + 24, 32)
    q2, _ = pe.qk(q, q, context(pe, (2, 3, 4)), 1)
    for i, (t, r, c) in enumerate(cells((2, 3, 4))):
        ang = c * f[0, 1] + r * f[1, 1] + t * f[2, 1]  # (heads, pairs): c f_x + r f_y + t f_t
        ref = torch.view_as_real(torch.view_as_complex(q[0, :, 1 + i].unflatten(-1, (-1, 2))) *
                                 torch.polar(torch.ones_like(ang), ang)).flatten(-2)
        torch.testing.assert_close(q2[0, :, 1 + i], ref, atol=1e-5, rtol=1e-5)


def test_irpe_third_axis():
    shape = (3, 2, 4)
    b, side = 3, 7  # beta = 2 * 1.9
    ids = irpe_bucket_ids(shape, 'product', 1.9, 3.8, 15.2)
    assert ids.max() < side ** 3
    coords = cells(shape)
    for i in (0, 5, 17):
        for j in (3, 11, 23):
            d = [coords[i][a] - coords[j][a] for a in range(3)]
            g = [int(piecewise_index(torch.tensor(float(x)), 1.9, 3.8, 15.2)) + b for x in d]
            assert ids[i, j] == (g[0] * side + g[1]) * side + g[2]
    pe = make('irpe', method='cross', on='qk')
    assert pe.k_table.shape[1] == 3  # one table per axis: t, h, w
    pe = make('irpe', method='euclidean')
    eu = irpe_bucket_ids(shape, 'euclidean', 1.9, 3.8, 15.2)
    assert eu[0, 23] == int(piecewise_index(torch.tensor(round(math.sqrt(4 + 1 + 9)) * 1.), 1.9, 3.8, 15.2)) + b


@pytest.mark.parametrize('on', ['k', 'qv'])
def test_irpe_video_model_is_the_same_on_either_path(monkeypatch, on):
    """The study's clip (4 x 2 x 2 tubelets, 17 tokens < 343 buckets) takes the per-pair path: the same
    logits and gradients as the per-bucket one, with every table trained away from zero."""
    from vitpe.pe.irpe import IRPE
    m = timm.create_model('vitpe_micro_patch16_irpe_video_8x64', num_classes=3, img_size=32,
                          pos_enc_args=dict(on=on, shared_head=False))
    assert m.pos_enc._pairs(Grid((4, 2, 2), 1))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith('_table'):
                p.normal_(0, 0.3)
    x, results = torch.randn(2, 3, 8, 32, 32), []
    for pairs in (True, False):
        monkeypatch.setattr(IRPE, 'pair_gather', pairs)
        m.zero_grad()
        y = m(x)
        y.square().sum().backward()
        results.append((y, [p.grad.clone() for p in m.parameters()]))
    (y1, g1), (y2, g2) = results
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('scheme', ['cpe', 'lepe'])
def test_conv_schemes_use_depthwise_conv3d(scheme):
    pe = make(scheme)
    conv = pe.convs[0]
    assert isinstance(conv, torch.nn.Conv3d) and conv.groups == 48 and conv.kernel_size == (3, 3, 3)
    x = torch.randn(2, 1 + 24, 48)
    ctx = context(pe, (2, 3, 4))
    grid_x = x[:, 1:].transpose(1, 2).reshape(2, 48, 2, 3, 4)
    ref = F.conv3d(grid_x, conv.weight, conv.bias, padding=1, groups=48).flatten(2).transpose(1, 2)
    if scheme == 'cpe':
        torch.testing.assert_close(pe.after_block(x, ctx, 0)[:, 1:], x[:, 1:] + ref)
    else:  # the conv over V: out + DWConv(V), heads' channels together
        v = x.unflatten(-1, (2, 24)).transpose(1, 2)  # (B, heads, N, head_dim)
        out = pe.value(torch.zeros_like(v), v, None, ctx, 0)
        torch.testing.assert_close(out[:, :, 1:].transpose(1, 2).flatten(2), ref)


def test_lape_abswin_fourier_decomposed_in_3d():
    lape = make('lape')
    assert lape.table.weight.shape == (1, 2, 3, 4, 48)
    ctx = context(lape, (2, 3, 4))
    p = torch.cat([lape.table.prefix, lape.table.weight.reshape(1, 24, 48)], 1)  # p_0: (t, h, w) row-major
    for layer in range(2):  # block l attends over LN_1(x) + p_l, p_l = LN_pe^l(p_{l-1})
        p = lape.norms[layer](p)
        torch.testing.assert_close(lape.attn_input(torch.zeros(1, 25, 48), ctx, layer), p)
    win = make('abswin', grid_size=(4, 6, 6), window_size=(2, 3, 3))
    emb = win.embedding((4, 6, 6)).reshape(4, 6, 6, 48) - win.pos_embed.detach()[0]
    for t, r, c in cells((4, 6, 6)):  # the window table tiled with period (2, 3, 3)
        torch.testing.assert_close(emb[t, r, c], win.pos_embed_window.detach()[0, t % 2, r % 3, c % 3])

    four = make('fourier', num_features=8, hidden_dim=16)
    assert four.freqs.shape == (1, 4, 3)  # M = 3
    feats = four.features(four.prepare(Grid((2, 3, 4), 0)).coords)[0]
    x = torch.tensor([1 / 2, 2 / 3, 3 / 4])  # token (1, 2, 3): coordinates over the training grid
    proj = four.freqs[0] @ x
    r = torch.cat([proj.cos(), proj.sin()]) / math.sqrt(8)
    ref = four.mlp(r[None, :, None])[0, :, 0]  # Eq. 2: PE = MLP(r)
    torch.testing.assert_close(feats[1 * 12 + 2 * 4 + 3], ref, atol=1e-6, rtol=1e-5)

    dec = make('decomposed')
    assert [t.shape for t in dec.tables] == [(2, 3, 24), (2, 5, 24), (2, 7, 24)]  # t, h, w tables
    q = torch.randn(1, 2, 1 + 24, 24)
    bias = dec.bias(q, q, context(dec, (2, 3, 4)), 1)
    coords = cells((2, 3, 4))
    for i, j in ((0, 23), (13, 4), (7, 7)):
        expected = sum(q[0, :, 1 + i] @ dec.tables[a][1, coords[i][a] - coords[j][a] + s - 1]
                       for a, s in enumerate((2, 3, 4)))
        torch.testing.assert_close(bias[0, :, 1 + i, 1 + j], expected)


# ------------------------------------------------------------------------------------------------ temporal strategies
def video(scheme='rope_axial', **kw):
    return timm.create_model(f'vitpe_micro_patch16_{scheme}_video_8x64', num_classes=3, **kw).eval()


def test_temporal_strategy_names():
    s = ResolutionStrategy.parse('ntk+riflex+logit')
    assert (s.positions, s.temporal, s.logit) == ('ntk', 'riflex', True) and s.name == 'ntk+riflex+logit'
    with pytest.raises(ValueError, match='cannot be combined'):
        ResolutionStrategy.parse('pi_t+riflex')
    assert 'riflex' in video().pos_enc.applicable_strategies()
    assert 'riflex' not in timm.create_model('vitpe_micro_patch16_rope_axial_64').pos_enc.applicable_strategies()
    with pytest.raises(ValueError, match="strategy 'riflex' does not apply to scheme 'rope_axial'"):
        timm.create_model('vitpe_micro_patch16_rope_axial_64')(torch.randn(1, 3, 64, 64), strategy='riflex')
    with pytest.raises(ValueError, match="strategy 'ntk_t' does not apply to scheme 'sincos'"):
        video('sincos')(torch.randn(1, 3, 8, 64, 64), strategy='ntk_t')


def test_pi_t_scales_the_time_coordinate_only():
    pe = video().pos_enc  # reference grid (4, 4, 4)
    shape = (8, 6, 6)  # 16 frames, 96 px
    c = grid_coords(pe, shape, ResolutionStrategy.parse('pi_t'), 'cpu')
    assert c[:, 0].max() == pytest.approx(7 * 4 / 8) and c[:, 1].max() == 5 and c[:, 2].max() == 5
    c = grid_coords(pe, shape, ResolutionStrategy.parse('pi+pi_t'), 'cpu')
    assert c[:, 0].max() == pytest.approx(3.5) and c[:, 1].max() == pytest.approx(5 * 4 / 6)
    c = grid_coords(pe, shape, ResolutionStrategy.parse('pi+riflex'), 'cpu')  # pi on h, w; time left to RIFLEx
    assert c[:, 0].max() == 7 and c[:, 1].max() == pytest.approx(5 * 4 / 6)


def test_ntk_t_scales_the_temporal_frequencies_only():
    pe = video().pos_enc  # head_dim 32: split (4, 6, 6), frequencies [w ladder | h ladder | t ladder]
    t_axis = pe.pair_axis == 0
    grid = Grid((16, 4, 4), 1)  # 32 frames: s_t = 4
    out = pe.scale_freqs(pe.freqs, grid, ResolutionStrategy.parse('ntk_t'), pe.pair_axis)
    d, n = 2 * 4, 4
    expected = (100 * 4 ** (d / (d - 2))) ** (-torch.arange(n) / n)  # theta' = theta s^(d/(d-2)) along time
    torch.testing.assert_close(out[t_axis], expected)
    torch.testing.assert_close(out[~t_axis], pe.freqs[~t_axis])
    # combined with spatial NTK: the spatial extension is over h, w only (here 2), not the 4 of time
    both = pe.scale_freqs(pe.freqs, Grid((16, 8, 8), 1), ResolutionStrategy.parse('ntk+ntk_t'), pe.pair_axis)
    ds = 2 * 6  # the channels of the w axis (split 4, 6, 6)
    torch.testing.assert_close(both[pe.pair_axis == 2], (100 * 2 ** (ds / (ds - 2))) ** (-torch.arange(6) / 6))
    torch.testing.assert_close(both[t_axis], expected)
    # as many frames as in training: nothing changes
    torch.testing.assert_close(pe.scale_freqs(pe.freqs, Grid((4, 4, 4), 1), ResolutionStrategy.parse('ntk_t'),
                                              pe.pair_axis), pe.freqs)


def test_yarn_beside_a_temporal_strategy_acts_on_height_and_width_only():
    """YaRN's temperature and ramp: over every axis alone, over h and w when a temporal strategy takes time."""
    pe = video().pos_enc  # reference grid 4 x 4 x 4
    longer = Grid((16, 4, 4), 1)  # only more frames
    assert pe.logit_temperature(longer, ResolutionStrategy.parse('yarn')) == pytest.approx((0.1 * math.log(4) + 1) ** 2)
    assert pe.logit_temperature(longer, ResolutionStrategy.parse('yarn+riflex')) == 1.0
    larger = Grid((16, 8, 8), 1)
    assert pe.logit_temperature(larger, ResolutionStrategy.parse('yarn+riflex')) == pytest.approx(
        (0.1 * math.log(2) + 1) ** 2)
    both = pe.scale_freqs(pe.freqs, longer, ResolutionStrategy.parse('yarn+riflex'), pe.pair_axis)
    torch.testing.assert_close(both[pe.pair_axis != 0], pe.freqs[pe.pair_axis != 0])  # h, w: not extended


@pytest.mark.parametrize('frames', [8, 16, 32])
def test_riflex_keeps_the_test_clip_within_one_period(frames):
    """RIFLEx lowers the intrinsic temporal frequency (period closest to the training clip) so that the test clip
    (frames / tubelet positions) stays within 0.9 of one period; every other frequency is kept."""
    pe = video().pos_enc
    t_axis = pe.pair_axis == 0
    f_t = pe.freqs[t_axis]  # 1, 100^-1/4, 100^-1/2, 100^-3/4: periods 6.3, 19.9, 62.8, 198.7 tubelets
    k = int((2 * math.pi / f_t - 4).abs().argmin())
    assert k == 0
    test_len = frames // 2
    out = pe.scale_freqs(pe.freqs, Grid((test_len, 4, 4), 1), ResolutionStrategy.parse('riflex'), pe.pair_axis)
    changed = (out != pe.freqs).nonzero().flatten().tolist()
    if test_len <= 4:
        assert changed == []
        return
    assert changed == [int(t_axis.nonzero()[k])]
    new = out[t_axis][k]
    assert new == pytest.approx(0.9 * 2 * math.pi / test_len)
    assert new * (test_len - 1) < 0.9 * 2 * math.pi  # every tubelet position's angle within one period: none alias
    assert f_t[k] * test_len > 2 * math.pi  # it was not before


def test_rope_mixed_temporal_axis_is_the_t_component():
    """For rope_mixed the temporal axis is the t component f_t of each learned frequency: ntk_t and riflex change
    row 2 of ``freqs`` (x, y, t) only; riflex one pair per (layer, head), within one period of the test clip."""
    pe = video('rope_mixed').pos_enc
    with torch.no_grad():
        pe.freqs.normal_(0, 1)
    grid = Grid((16, 4, 4), 1)  # 32 frames
    for name in ('ntk_t', 'riflex'):
        out = pe.scale_freqs(pe.freqs, grid, ResolutionStrategy.parse(name))
        torch.testing.assert_close(out[:2], pe.freqs[:2])
        assert not torch.equal(out[2], pe.freqs[2])
    out = pe.scale_freqs(pe.freqs, grid, ResolutionStrategy.parse('riflex')).detach()
    changed = (out[2] != pe.freqs[2]).sum(-1)
    assert (changed <= 1).all() and changed.sum() > 0
    period = 2 * math.pi / pe.freqs[2].detach().abs()  # per (layer, head), the pair whose period is closest to 4
    k = (period - 4).abs().argmin(-1, keepdim=True)
    lowered = out[2].gather(-1, k).abs()
    assert (lowered * 16 <= 0.9 * 2 * math.pi + 1e-5).all()  # the test clip within one period of it
    torch.testing.assert_close(out[2].scatter(-1, k, 0.), pe.freqs[2].detach().scatter(-1, k, 0.))  # others kept
    ntk = pe.scale_freqs(pe.freqs, grid, ResolutionStrategy.parse('ntk_t')).detach()
    e = (-pe.freqs[2].abs().log() / math.log(10)).clamp(0, 1)
    torch.testing.assert_close(ntk[2], pe.freqs[2] * 4 ** (-e * 8 / 6))  # d = 2 n_t = 8, s = 4


def test_temporal_strategies_in_the_forward():
    m = video()
    x = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        ref = m(x)
        for name in ('pi_t', 'ntk_t', 'riflex', 'ntk+riflex'):
            assert not torch.allclose(m(x, strategy=name), ref), name
        same = torch.randn(1, 3, 8, 64, 64)  # the training clip: temporal strategies change nothing
        torch.testing.assert_close(m(same, strategy='riflex'), m(same))
        torch.testing.assert_close(m(same, strategy='ntk_t'), m(same))
