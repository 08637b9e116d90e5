"""The defining property of each scheme timm lacks, checked against the paper's formula."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vitpe
from vitpe.pe import Grid, PosContext
from vitpe.pe.irpe import irpe_bucket_ids, irpe_num_buckets, piecewise_index


def make(name, grid_size=(4, 5), dim=32, heads=2, depth=3, prefix=1, **opts):
    return vitpe.create_pos_encoding(name, dim=dim, num_heads=heads, depth=depth, grid_size=grid_size,
                                     num_prefix_tokens=prefix, **opts)


def context(pe, shape, prefix=1):
    grid = Grid(tuple(shape), prefix)
    return PosContext(pe, grid, pe.prepare(grid))


# ------------------------------------------------------------------------------------------------ iRPE
def g_paper(x, alpha=1.9, beta=3.8, gamma=15.2):
    """Eq. 18 of the iRPE paper, scalar."""
    if abs(x) <= alpha:
        return round(x)
    y = round(alpha + math.log(abs(x) / alpha) / math.log(gamma / alpha) * (beta - alpha))
    return int(math.copysign(min(beta, y), x))


def test_piecewise_index_is_eq18():
    xs = torch.arange(-40, 41, dtype=torch.float32)
    got = piecewise_index(xs, 1.9, 3.8, 15.2)
    assert got.tolist() == [g_paper(float(x)) for x in xs]
    assert got.tolist()[40 - 2: 40 + 3] == [-2, -1, 0, 1, 2]  # exact near 0
    assert got.max() == 3 and got.min() == -3  # saturates at int(beta)


@pytest.mark.parametrize('method,expected', [('product', 49), ('euclidean', 7), ('quant', 7), ('cross', 7)])
def test_bucket_counts(method, expected):
    assert irpe_num_buckets(method, 3.8) == expected
    pe = make('irpe', method=method, mode='bias', prefix=1)
    axes = 2 if method == 'cross' else 1
    assert pe.k_table.shape == (3, axes, 1, expected + 1)  # + the prefix bucket


def test_irpe_contextual_scale_none_drops_the_one_over_sqrt_d():
    """contextual_scale='none' (a study option) gives exactly sqrt(d) times the paper's contextual bias."""
    paper, unscaled = make('irpe', on='qk'), make('irpe', on='qk', contextual_scale='none')
    torch.manual_seed(0)
    for p in paper.parameters():
        p.data.normal_()
    unscaled.load_state_dict(paper.state_dict())
    q, k = torch.randn(2, 2, 21, 16), torch.randn(2, 2, 21, 16)
    ctx = context(paper, (4, 5))
    torch.testing.assert_close(unscaled.bias(q, k, ctx, 1), paper.bias(q, k, ctx, 1) * 16 ** 0.5)
    with pytest.raises(ValueError, match="contextual_scale"):
        make('irpe', contextual_scale='sqrt')


def test_bucket_ids_follow_the_methods():
    shape = (6, 7)
    coords = [(r, c) for r in range(6) for c in range(7)]
    ids = {m: irpe_bucket_ids(shape, m, 1.9, 3.8, 15.2) for m in ('product', 'euclidean', 'quant')}
    rows = irpe_bucket_ids(shape, 'cross', 1.9, 3.8, 15.2, axis=0)
    for i in (0, 9, 41):
        for j in (0, 5, 20, 41):
            dr, dc = coords[i][0] - coords[j][0], coords[i][1] - coords[j][1]
            assert ids['product'][i, j] == (g_paper(dr) + 3) * 7 + g_paper(dc) + 3
            assert ids['euclidean'][i, j] == g_paper(round(math.sqrt(dr * dr + dc * dc))) + 3
            assert ids['quant'][i, j] == g_paper(dr * dr + dc * dc) + 3
            assert rows[i, j] == g_paper(dr) + 3


@pytest.mark.parametrize('method', ['product', 'euclidean', 'cross'])
def test_bucket_ids_by_offset_lookup_match_the_pairwise_formula_in_3d(method):
    """Ids are looked up by offset; the same as the formula applied to every (query, key) pair."""
    from vitpe.pe.common import coord_grid
    from vitpe.pe.irpe import irpe_offset_buckets
    shape = (3, 4, 5)
    coords = coord_grid(shape)
    direct = irpe_offset_buckets(coords[:, None] - coords[None], method, 1.9, 3.8, 15.2, axis=1)
    rows = torch.tensor([0, 7, 33, 59])
    torch.testing.assert_close(irpe_bucket_ids(shape, method, 1.9, 3.8, 15.2, axis=1), direct)
    torch.testing.assert_close(irpe_bucket_ids(shape, method, 1.9, 3.8, 15.2, axis=1, rows=rows), direct[rows])
    torch.testing.assert_close(irpe_bucket_ids(shape, method, 1.9, 3.8, 15.2, axis=1, rows=rows, keys_first=True),
                               direct[:, rows])


def test_contextual_on_keys_queries_values():
    pe = make('irpe', mode='contextual', method='product', on='qkv', shared_head=False)
    with torch.no_grad():
        for t in (pe.q_table, pe.k_table, pe.v_table):
            t.normal_()
    ctx = context(pe, (4, 5))
    n = 21
    q, k, v = torch.randn(3, 2, 2, n, 16).unbind(0)
    bias = pe.bias(q, k, ctx, layer=1)
    ids = pe.bucket_ids(ctx.grid)[0]
    assert ids[0].eq(49).all() and ids[:, 0].eq(49).all()  # pairs with the cls token share the extra bucket
    s = 16 ** -0.5
    b, h, i, j = 1, 1, 7, 13
    expect = (q[b, h, i] * s) @ pe.k_table[1, 0, h][:, ids[i, j]] + (k[b, h, j] * s) @ pe.q_table[1, 0, h][:, ids[j, i]]
    torch.testing.assert_close(bias[b, h, i, j], expect)
    attn = torch.softmax(torch.randn(2, 2, n, n), -1)
    out = pe.value(torch.zeros(2, 2, n, 16), v, attn, ctx, layer=2)
    expect_v = sum(attn[b, h, i, jj] * pe.v_table[2, 0, h][ids[i, jj]] for jj in range(n))
    torch.testing.assert_close(out[b, h, i], expect_v)


def test_bias_mode_is_a_table_lookup():
    pe = make('irpe', mode='bias', method='cross', on='k')
    with torch.no_grad():
        pe.k_table.normal_()
    ctx = context(pe, (3, 4))
    q = torch.randn(1, 2, 13, 16)
    bias = pe.bias(q, q, ctx, layer=0)
    ids = pe.bucket_ids(ctx.grid)
    assert bias.shape == (1, 1, 13, 13)  # shared over heads: broadcast by SDPA
    torch.testing.assert_close(bias[0, 0, 5, 9], pe.k_table[0, 0, 0, ids[0, 5, 9]] + pe.k_table[0, 1, 0, ids[1, 5, 9]])


def test_irpe_value_model_uses_the_explicit_path_and_others_sdpa():
    m = timm.create_model('vitpe_tiny_patch16_224', pos_enc='irpe', pos_enc_args=dict(on='qkv'))
    assert m.pos_enc.needs_attn_probs
    for name in ('none', 'ape', 'rope_mixed', 'cpe', 'lape'):
        pe = make(name)
        assert not pe.uses('bias') and not pe.needs_attn_probs, name


# ------------------------------------------------------------------------------------------------ LePE
def test_lepe_adds_a_depthwise_conv_of_v():
    pe = make('lepe', kernel_size=3)
    ctx = context(pe, (4, 5))
    v = torch.randn(2, 2, 21, 16)
    out = torch.randn(2, 2, 21, 16)
    got = pe.value(out, v, None, ctx, layer=1)
    conv = pe.convs[1]
    v_img = v[:, :, 1:].transpose(1, 2).reshape(2, 20, 32).transpose(1, 2).reshape(2, 32, 4, 5)
    ref = F.conv2d(v_img, conv.weight, conv.bias, padding=1, groups=32).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got[:, :, 1:], out[:, :, 1:] + ref.reshape(2, 20, 2, 16).transpose(1, 2))
    torch.testing.assert_close(got[:, :, :1], out[:, :, :1])  # the cls token gets no conv term


# ------------------------------------------------------------------------------------------------ CPE
def test_cpe_conv_after_the_chosen_block_only():
    pe = make('cpe', blocks=(1,), kernel_size=5)
    ctx = context(pe, (4, 5))
    x = torch.randn(2, 21, 32)
    torch.testing.assert_close(pe.after_block(x, ctx, 0), x)
    torch.testing.assert_close(pe.after_block(x, ctx, 2), x)
    got = pe.after_block(x, ctx, 1)
    conv = pe.convs[0]
    img = x[:, 1:].transpose(1, 2).reshape(2, 32, 4, 5)
    ref = F.conv2d(img, conv.weight, conv.bias, padding=2, groups=32).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got[:, 1:], x[:, 1:] + ref)
    torch.testing.assert_close(got[:, :1], x[:, :1])


# ------------------------------------------------------------------------------------------------ LaPE
def test_lape_keeps_the_pe_out_of_the_residual_stream():
    m = timm.create_model('vitpe_tiny_patch16_lape_224', num_classes=0).eval()
    pe = m.pos_enc
    assert not pe.uses('tokens') and pe.uses('attn_input')
    x = torch.randn(1, 3, 64, 80)
    tokens, ctx = m.embed(x)
    # the residual stream after embedding holds no position
    raw, _ = m.patch_embed(x)
    torch.testing.assert_close(tokens[:, 1:], raw)
    # p_l = LN_l(p_{l-1}), chained from p_0 (table with a cls row)
    p = p0 = pe.table.add(pe, torch.zeros(1, 21, 192), ctx.grid)
    for layer in range(3):  # block l adds p_{l+1}
        p = pe.norms[layer](p)
        torch.testing.assert_close(pe.attn_input(torch.zeros(1, 21, 192), ctx, layer), p)
    # block 0 = x + Attn(LN_1(x) + p_1) + MLP, computed by hand
    blk = m.blocks[0]
    h = blk.norm1(tokens) + pe.norms[0](p0)
    qkv = blk.attn.qkv(h).reshape(1, 21, 3, 3, 64).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(1, 21, 192)
    y = tokens + blk.attn.proj(a)
    y = y + blk.mlp(blk.norm2(y))
    torch.testing.assert_close(blk(tokens, ctx), y)
    # without autograd the chain is built block by block (and earlier p's dropped): the same output
    with torch.no_grad():
        lazy = m(x)
    torch.testing.assert_close(lazy, m(x))


# ------------------------------------------------------------------------------------------------ Fourier
def test_fourier_features_formula():
    pe = make('fourier', num_features=8, hidden_dim=6, gamma=2.0, grid_size=(4, 5))
    ctx = context(pe, (4, 5))
    coords = ctx.state.coords
    torch.testing.assert_close(coords[7], torch.tensor([1 / 4, 2 / 5]))  # (r, c) / reference grid
    w = pe.freqs[0]  # (F/2, M)
    r = torch.cat([torch.cos(coords @ w.t()), torch.sin(coords @ w.t())], dim=1) / math.sqrt(8)
    l1, l2 = pe.mlp[0], pe.mlp[2]
    ref = F.gelu(r @ l1.weight[:, :, 0].t() + l1.bias) @ l2.weight[:, :, 0].t() + l2.bias
    x = torch.zeros(1, 21, 32)
    torch.testing.assert_close(pe.tokens(x, ctx)[0, 1:], ref)
    assert abs(pe.freqs.std().item() - 0.5) < 0.3  # N(0, gamma^-2) with gamma = 2


def test_fourier_extends_coordinates_on_larger_grids():
    pe = make('fourier', grid_size=(4, 4))
    ctx = context(pe, (8, 8))
    assert ctx.state.coords.max() == pytest.approx(7 / 4)


# ------------------------------------------------------------------------------------------------ abswin, decomposed
def test_abswin_tiles_the_window_and_crops():
    pe = make('abswin', grid_size=(8, 8), window_size=(3, 3), global_size=(8, 8))
    t = pe.embedding((7, 7)).reshape(7, 7, 32) - vitpe.pe.common.resample_table(
        pe.pos_embed.detach(), (7, 7))[0]
    torch.testing.assert_close(t[0, 0], t[3, 3])  # window part repeats with period 3
    torch.testing.assert_close(t[1, 2], t[4, 5])


def test_decomposed_tables_resample_on_load():
    small = timm.create_model('vitpe_tiny_patch16_decomposed_224')
    with torch.no_grad():
        for t in small.pos_enc.tables:
            t.normal_()
    big = timm.create_model('vitpe_tiny_patch16_decomposed_224', img_size=320)
    big.load_state_dict(small.state_dict())
    assert big.pos_enc.tables[0].shape == (12, 39, 64)
    ref = F.interpolate(small.pos_enc.tables[0][3].detach().t()[None], size=39, mode='linear')[0].t()
    torch.testing.assert_close(big.pos_enc.tables[0][3].detach(), ref)


def test_rope_mixed_3d_and_rope_grid_rank():
    pe = make('rope_mixed', grid_size=(2, 4, 4), dim=48, heads=2)
    assert pe.freqs.shape == (3, 3, 2, 12)
    ctx = context(pe, (3, 4, 5))
    q = torch.randn(1, 2, 61, 24)
    q2, _ = pe.qk(q, q, ctx, 0)
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps norms
    torch.testing.assert_close(q2[:, :, 0], q[:, :, 0])  # the prefix token is not rotated


@pytest.mark.parametrize('scheme,options', [('irpe', dict(method='product', on='qkv', shared_head=False)),
                                            ('irpe', dict(method='cross', on='qk')),
                                            ('irpe', dict(method='euclidean', on='kv')),
                                            ('decomposed', dict(zero_init=False))])
def test_bias_schemes_in_row_chunks_match_the_full_bias(scheme, options):
    """Large grids run attention a chunk of query rows at a time (iRPE also computes its bucket ids per
    chunk, keys first for iRPE on queries): the same numbers as one full bias."""
    from vitpe.layers import Attention
    m = timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, num_classes=0, depth=2,
                          pos_enc_args=options).eval()
    with torch.no_grad():
        for p in m.pos_enc.parameters():
            p.normal_()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = m(x)
        m.pos_enc.cache_tokens = 0  # (iRPE) no cached (N, N) ids
        old = Attention.bias_budget_mb
        Attention.bias_budget_mb = 0.02  # a few rows per chunk
        try:
            assert m.blocks[0].attn.path_for(m.pos_enc, 2, 49) == 'chunked'
            got = m(x)
        finally:
            Attention.bias_budget_mb = old
    torch.testing.assert_close(got, ref)


# ------------------------------------------------------------------------------------------------ fidelity to the authors' code
def test_cpe_conv_is_initialised_as_cpvt():
    """CPVT / Twins: weights N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups = k*k for a depthwise conv; bias 0."""
    m = timm.create_model('vitpe_base_patch16_cpe_224', pos_enc_args=dict(kernel_size=5))
    conv = m.pos_enc.convs[0]
    assert conv.bias.abs().max() == 0
    assert abs(conv.weight.std().item() - math.sqrt(2 / 25)) < 0.01  # 768 x 25 draws
    assert abs(conv.weight.mean().item()) < 0.01


def test_irpe_ape_is_the_official_deit_irpe_model():
    """The DeiT-iRPE models keep DeiT's learned absolute embedding (with a class-token row) next to iRPE."""
    m = timm.create_model('vitpe_small_patch16_irpe_ape_224')
    pe = m.pos_enc
    assert pe.uses('tokens') and pe.uses('bias') and pe.table.weight.shape == (1, 14, 14, 384)
    assert pe.table.prefix.shape == (1, 1, 384)
    assert (pe.mode, pe.method, pe.on, pe.shared_head, pe.alpha) == ('contextual', 'product', 'k', True, 1.9)
    plain = timm.create_model('vitpe_small_patch16_irpe_224').pos_enc
    assert not plain.uses('tokens') and plain.table is None
    x = torch.zeros(1, 197, 384)
    ctx = context(pe, (14, 14))
    torch.testing.assert_close(pe.tokens(x, ctx)[0, 1:], pe.table.weight[0].reshape(196, 384))


@pytest.mark.parametrize('scheme', ['ape', 'lape', 'abswin', 'rope_axial'])
def test_antialias_option_follows_timm_or_the_authors_code(scheme):
    """timm resamples tables with antialias (PIL's bicubic, a = -0.5: the default); SAM2, DeiT and RoPE-ViT's own
    code call plain F.interpolate bicubic (a = -0.75): ``antialias=False``."""
    from timm.layers import resample_abs_pos_embed
    opts = dict(ape=True) if scheme == 'rope_axial' else {}
    on, off = (make(scheme, grid_size=(8, 8), antialias=a, **opts) for a in (True, False))
    off.load_state_dict(on.state_dict())
    weight = (on.pos_embed if scheme == 'abswin' else on.table.weight).detach()
    for shape in ((12, 10), (5, 5)):
        plain = F.interpolate(weight.permute(0, 3, 1, 2), size=shape, mode='bicubic', align_corners=False)
        timm_table = resample_abs_pos_embed(weight.flatten(1, 2), list(shape), (8, 8), num_prefix_tokens=0)
        for pe, expected in ((on, timm_table[0]), (off, plain.permute(0, 2, 3, 1).flatten(1, 2)[0])):
            if scheme == 'abswin':  # the global part: the embedding less the tiled window table
                tiled = pe.pos_embed_window.repeat(1, 2, 2, 1)[:, :shape[0], :shape[1]].flatten(1, 2)
                got = (pe.embedding(shape) - tiled)[0]
            else:
                got = pe.table.at(pe, shape)[0]
            torch.testing.assert_close(got, expected, msg=str(shape))


@pytest.mark.parametrize('prefix', [1, 3])
def test_irpe_bias_is_the_formula_for_every_pair_prefix_tokens_included(prefix):
    """Eq. 7 on keys and queries for every (i, j), pairs with a prefix token in the extra bucket, in one piece and
    in row chunks (the shared ``grid_bias`` padding on a slice of query rows)."""
    pe = make('irpe', mode='contextual', method='cross', on='qk', shared_head=False, prefix=prefix)
    with torch.no_grad():
        pe.q_table.normal_()
        pe.k_table.normal_()
    ctx = context(pe, (4, 5), prefix=prefix)
    n = prefix + 20
    q, k = torch.randn(2, 2, 2, n, 16).unbind(0)
    ids = pe.bucket_ids(ctx.grid)  # (axes, N, N)
    assert (ids[:, :prefix] == pe.prefix_bucket).all() and (ids[:, :, :prefix] == pe.prefix_bucket).all()
    s = 16 ** -0.5
    expected = sum(torch.einsum('bhid,hdij->bhij', q * s, pe.k_table[1, a][:, :, ids[a]]) +
                   torch.einsum('bhjd,hdji->bhij', k * s, pe.q_table[1, a][:, :, ids[a]]) for a in range(2))
    torch.testing.assert_close(pe.bias(q, k, ctx, layer=1), expected)
    chunks = [pe.bias(q[:, :, r:r + 3], k, ctx, 1, slice(r, r + 3)) for r in range(0, n, 3)]
    torch.testing.assert_close(torch.cat(chunks, dim=2), expected)
