"""The extrapolation schemes from language models (alibi, fire, kerple, lookhere, xpos) against their formulas on
small grids (hand-computed distances of a 2 x 3 grid, a 3D grid), the papers' 1D forms on a 1 x N grid, and the
randomised positions of training (Ruoss et al. 2023)."""
import math

import pytest
import torch

import vitpe
from helpers import micro
from vitpe.pe import Grid, PosContext
from vitpe.pe.alibi import alibi_slopes
from vitpe.pe.common import GridPositions, random_positions
from vitpe.pe.strategy import NO_STRATEGY

R2, R5 = math.sqrt(2), math.sqrt(5)
# distances between the patches of a 2 x 3 grid, row major: (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
EUCLID_2x3 = torch.tensor([[0, 1, 2, 1, R2, R5], [1, 0, 1, R2, 1, R2], [2, 1, 0, R5, R2, 1],
                           [1, R2, R5, 0, 1, 2], [R2, 1, R2, 1, 0, 1], [R5, R2, 1, 2, 1, 0]])
MANHATTAN_2x3 = torch.tensor([[0, 1, 2, 1, 2, 3], [1, 0, 1, 2, 1, 2], [2, 1, 0, 3, 2, 1],
                              [1, 2, 3, 0, 1, 2], [2, 1, 2, 1, 0, 1], [3, 2, 1, 2, 1, 0]], dtype=torch.float32)
# a (T, H, W) = (2, 1, 2) video grid: (0,0,0) (0,0,1) (1,0,0) (1,0,1)
EUCLID_3D = torch.tensor([[0, 1, 1, R2], [1, 0, R2, 1], [1, R2, 0, 1], [R2, 1, 1, 0]])


def scheme(name, rank=2, heads=4, **options):
    """A bare scheme (no trunk) of ``heads`` heads of width 16 over a rank-``rank`` grid."""
    return vitpe.create_pos_encoding(name, dim=16 * heads, num_heads=heads, depth=2, grid_size=(4,) * rank,
                                     num_prefix_tokens=1, **options)


def bias_of(pe, shape, layer=0, batch=1):
    """The scheme's bias over the patch tokens of ``shape`` (one prefix token, whose row and column must be 0)."""
    grid = Grid(tuple(shape), 1)
    ctx = PosContext(pe, grid, pe.prepare(grid, device=torch.device('cpu')), device=torch.device('cpu'))
    q = torch.zeros(batch, pe.num_heads, grid.num_tokens, pe.head_dim)
    with torch.no_grad():
        out = pe.bias(q, q, ctx, layer)
    assert (out[..., 0, :] == 0).all() and (out[..., :, 0] == 0).all()
    return out[..., 1:, 1:]


def test_alibi_slopes_are_the_papers():
    assert alibi_slopes(8) == [2 ** -i for i in range(1, 9)]
    assert alibi_slopes(4) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    assert alibi_slopes(3) == [2 ** -4, 2 ** -8, 2 ** -2]  # those of 2 heads, then every other one of 4


@pytest.mark.parametrize('distance, table', [('euclidean', EUCLID_2x3), ('manhattan', MANHATTAN_2x3)])
def test_alibi_on_a_2x3_grid(distance, table):
    got = bias_of(scheme('alibi', distance=distance), (2, 3))[0]
    want = -torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256])[:, None, None] * table
    torch.testing.assert_close(got, want)


def test_alibi_in_3d_and_in_1d():
    got = bias_of(scheme('alibi', rank=3), (2, 1, 2))[0]
    torch.testing.assert_close(got, -torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256])[:, None, None] * EUCLID_3D)
    n = 7  # a 1 x N grid: below the diagonal, the paper's causal bias -m (i - j)
    got = bias_of(scheme('alibi', heads=8), (1, n))[0]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    causal = -torch.tensor(alibi_slopes(8))[:, None, None] * (i - j).float()
    mask = (j <= i).expand_as(got)
    torch.testing.assert_close(got[mask], causal[mask])


@pytest.mark.parametrize('kernel', ['log', 'power'])
def test_kerple_on_a_2x3_grid_and_in_3d(kernel):
    pe = scheme('kerple', kernel=kernel)
    r1, r2 = torch.tensor([0.5, 1.0, 1.5, 0.005]), torch.tensor([0.3, 0.7, 1.9, 3.0])  # 0.005 and 3.0 get clamped
    with torch.no_grad():
        pe.r1.copy_(r1[None])
        pe.r2.copy_(r2[None])
    r1c = r1.clamp(min=0.01)[:, None, None]
    for shape, table in (((2, 3), EUCLID_2x3), ((2, 1, 2), EUCLID_3D)):
        if len(shape) == 3:
            pe3 = scheme('kerple', rank=3, kernel=kernel)
            pe3.load_state_dict(pe.state_dict())
            got = bias_of(pe3, shape)[0]
        else:
            got = bias_of(pe, shape)[0]
        if kernel == 'log':
            want = -r1c * torch.log(1 + r2.clamp(min=0.01)[:, None, None] * table)
        else:
            want = -r1c * table ** r2.clamp(0.01, 2)[:, None, None]
        torch.testing.assert_close(got, want)


def test_kerple_parameters_learn_and_are_per_layer_on_request():
    pe = scheme('kerple', kernel='power', per_layer=True)
    assert pe.r1.shape == (2, 4)
    grid = Grid((3, 3), 1)
    ctx = PosContext(pe, grid, pe.prepare(grid), device=torch.device('cpu'))
    q = torch.zeros(1, 4, 10, 16)
    (pe.bias(q, q, ctx, 1).sum()).backward()
    assert torch.isfinite(pe.r2.grad).all() and pe.r2.grad[1].abs().sum() > 0 and (pe.r2.grad[0] == 0).all()


def fire_reference(c, threshold, inputs, largest, heads):
    """The FIRE bias with f_h(x) = (h + 1) relu(x) (a 1-wide MLP set so): the paper's formula."""
    psi = lambda x: math.log(abs(c * x) + 1)  # noqa: E731
    return torch.stack([(h + 1) * torch.relu(torch.tensor(
        [[psi(x) / (psi(max(threshold, largest)) + 1e-6) for x in row] for row in inputs.tolist()]))
        for h in range(heads)])


def set_fire_mlp(pe):
    mlp = pe.mlps[0]
    with torch.no_grad():
        mlp[0].weight.fill_(1.)
        mlp[0].bias.zero_()
        mlp[2].weight.copy_(torch.arange(1., pe.num_heads + 1)[:, None])
        mlp[2].bias.zero_()


def test_fire_distance_on_a_2x3_grid_and_in_3d():
    for rank, shape, table in ((2, (2, 3), EUCLID_2x3), (3, (2, 1, 2), EUCLID_3D)):
        pe = scheme('fire', rank=rank, hidden_dim=1)
        set_fire_mlp(pe)
        largest = math.sqrt(sum((s - 1) ** 2 for s in shape))  # the largest distance of the grid
        threshold = 0.25 * math.sqrt(rank * 3 ** 2)  # 0.25 x the training grid's (4 x 4 (x 4)) largest distance
        want = fire_reference(0.1, threshold, table, largest, 4)
        torch.testing.assert_close(bias_of(pe, shape)[0], want)


def test_fire_axes_keeps_the_sign_of_each_offset():
    pe = scheme('fire', mode='axes', hidden_dim=1)
    set_fire_mlp(pe)
    with torch.no_grad():
        pe.mlps[0][0].weight.copy_(torch.tensor([[0., 1.]]))  # f reads the column offset only
    got = bias_of(pe, (2, 3))[0]
    cols = torch.tensor([0, 1, 2, 0, 1, 2])
    offset = (cols[:, None] - cols[None]).float()  # query minus key
    psi = lambda x: torch.log(0.1 * x + 1)  # noqa: E731
    norm = math.log(0.1 * max(0.25 * 3, 2) + 1) + 1e-6
    want = torch.stack([(h + 1) * torch.relu(torch.sign(offset) * psi(offset.abs()) / norm) for h in range(4)])
    torch.testing.assert_close(got, want)
    assert got[0, 2, 0] > 0 and got[0, 0, 2] == 0  # a key to the left differs from one to the right


def test_fire_is_the_papers_1d_form_on_a_1xn_grid():
    """With L >= N - 1 the paper's normaliser psi(max(L, i)) is psi(L) for every query: FIRE below the diagonal."""
    n = 6
    torch.manual_seed(0)
    pe = scheme('fire', threshold=3.0)  # L = 3 x 3 sqrt 2 (the training grid's largest distance) > n - 1
    got = bias_of(pe, (1, n))[0]
    c, L = pe.c[0].item(), pe.threshold_patches.item()
    psi = lambda x: math.log(abs(c * x) + 1)  # noqa: E731
    with torch.no_grad():
        for i in range(n):
            x = torch.tensor([[psi(i - j) / (psi(max(L, i)) + 1e-6)] for j in range(i + 1)])
            torch.testing.assert_close(got[:, i, :i + 1], pe.mlps[0](x).t())


def test_fire_normalised_offsets_stay_in_range_at_any_grid():
    pe = scheme('fire')
    for shape in ((4, 4), (16, 16), (40, 7)):
        st = pe.prepare(Grid(shape, 0))
        assert torch.isfinite(st.tables).all()
    # the MLP sees inputs within [0, 1] at every size: the input to the first layer is psi(d) / psi(max(L, D))
    seen = []
    handle = pe.mlps[0][0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    for shape in ((4, 4), (64, 64)):
        pe.prepare(Grid(shape, 0))
    handle.remove()
    assert all(0 <= s.min() and s.max() <= 1 for s in seen)


# LookHere: masks of the 2 x 3 grid, keys visible from each query (rows: queries, row major)
UP = torch.tensor([[1, 1, 1, 0, 0, 0]] * 3 + [[1] * 6] * 3, dtype=torch.bool)  # key row <= query row
RIGHT = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1], [0, 0, 1, 0, 0, 1]] * 2, dtype=torch.bool)


def lookhere(**options):
    """LookHere with unit global and layer slopes (the slopes m_h alone), unless ``options`` say otherwise."""
    return scheme('lookhere', **{'global_slope': 1.0, 'layer_slopes': (1.0, 1.0), **options})


def test_lookhere_masks_and_penalties_on_a_2x3_grid():
    got = bias_of(lookhere(directions='halves'), (2, 3))[0]
    inf = torch.tensor(float('-inf'))
    torch.testing.assert_close(got[0], torch.where(UP, -0.5 * EUCLID_2x3, inf))  # head 0 looks up, slope 1/2
    torch.testing.assert_close(got[1], torch.where(UP.t(), -0.5 * EUCLID_2x3, inf))  # down: the transpose
    torch.testing.assert_close(got[3], torch.where(RIGHT, -0.5 * EUCLID_2x3, inf))
    corners = bias_of(lookhere(directions='corners', heads=8, global_slope=2.0), (2, 3))[0]
    # head 5: up-right, slope 2 x 2^-2; head 1 the same direction with slope 2 x 2^-1
    torch.testing.assert_close(corners[5], torch.where(UP & RIGHT, -0.5 * EUCLID_2x3, inf))
    torch.testing.assert_close(corners[1], torch.where(UP & RIGHT, -1.0 * EUCLID_2x3, inf))
    tri = bias_of(lookhere(directions='triangles'), (2, 3))[0]
    # head 1 looks down in the cone dy >= |dx|: from (0, 1) it sees itself and (1, 0), (1, 1), (1, 2)
    assert torch.isfinite(tri[1, 1]).tolist() == [False, True, False, True, True, True]
    squared = bias_of(lookhere(directions='halves', distance='square'), (2, 3))[0]
    torch.testing.assert_close(squared[0], torch.where(UP, -0.5 * EUCLID_2x3 ** 2, inf))


# the 3 x 3 grid seen from its centre, keys row major: which of the 9 keys each field of view holds
CENTRE_VIEWS = {('diagonals', 0): [1, 1, 1, 0, 1, 1, 0, 0, 1],  # the up cone or the right cone
                ('eighths1', 0): [1, 1, 0, 0, 1, 0, 0, 0, 0],   # the up cone, left half: up to the up-left diagonal
                ('eighths2', 3): [0, 0, 0, 0, 1, 1, 0, 0, 1],   # the right cone, lower half
                ('none', 0): [1] * 9}


@pytest.mark.parametrize('directions,head', list(CENTRE_VIEWS))
def test_lookhere_45_and_180_degree_fields_of_view(directions, head):
    got = bias_of(lookhere(directions=directions), (3, 3))[0, head, 4]
    assert torch.isfinite(got).int().tolist() == CENTRE_VIEWS[(directions, head)]


def test_lookhere_deals_heads_to_groups_as_the_reference():
    from vitpe.pe.lookhere import deal_heads
    groups = ['halves', 'diagonals', 'none']
    assert [(g, i) for g, i, _ in deal_heads(groups, 12)] == [(g, i) for g in groups for i in range(4)]
    assert [g for g, _, _ in deal_heads(groups[:2], 12)] == ['halves'] * 8 + ['diagonals'] * 4
    assert [g for g, _, _ in deal_heads(groups, 16)] == ['halves'] * 8 + ['diagonals'] * 4 + ['none'] * 4
    assert [(g, i) for g, i, _ in deal_heads(groups, 6)] == [('halves', i) for i in range(4)] + [
        ('diagonals', 0), ('diagonals', 1)]
    assert [(g, i) for g, i, _ in deal_heads(groups, 3)] == [('halves', 0), ('halves', 1), ('halves', 2)]
    # the default is LH-180 with g = 2 and layer slopes 1.5 -> 0.5: at 12 heads, head 8 is the first 'none' head
    # (no mask, slope 1/4) and head 4 the first 'diagonals' head (up or right, slope 1/2)
    pe = scheme('lookhere', heads=12)
    first, last = bias_of(pe, (2, 3), layer=0)[0], bias_of(pe, (2, 3), layer=1)[0]
    torch.testing.assert_close(first[8], -2 * 1.5 * 0.25 * EUCLID_2x3)
    torch.testing.assert_close(last[11], -2 * 0.5 / 256 * EUCLID_2x3)
    assert torch.isfinite(first[4, 0]).tolist() == [True, True, True, False, True, True]  # from (0, 0)
    zero = bias_of(lookhere(directions='corners-zero', heads=6), (2, 3))[0]
    assert (zero[4:] == 0).all() and torch.isinf(zero[:4]).any()
    for bad in ('lh60', 'halves-up', 'halves-', 'lh180-none'):  # a named model is not a set within groups
        with pytest.raises(ValueError, match='lookhere: invalid directions'):
            scheme('lookhere', directions=bad)
    with pytest.raises(ValueError, match='lookhere: invalid distance'):
        scheme('lookhere', distance='cube')


def test_lookhere_layer_slopes_and_3d():
    pe = lookhere(directions='halves', layer_slopes=(1.5, 0.5))
    torch.testing.assert_close(bias_of(pe, (2, 3), layer=1)[0, 0], torch.where(UP, -0.25 * EUCLID_2x3, -math.inf))
    got = bias_of(lookhere(rank=3, directions='halves'), (2, 1, 2))[0]
    # head 3 looks right: keys in column >= the query's, in every frame; distances over (t, row, col)
    visible = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(got[3], torch.where(visible, -0.5 * EUCLID_3D, -math.inf))


def test_lookhere_attention_stays_finite_with_three_heads():
    m = micro('lookhere', num_heads=3, embed_dim=96)
    assert torch.isfinite(m(torch.randn(2, 3, 64, 96))).all()


def xpos_reference(q, k, rows, cols, theta, gamma, base, signs):
    """Naive xPos logits of one head (q, k: (N, d)) on a (rows, cols) grid, pair by pair: RoPE-ViT's axial
    rotation (the first half of the pairs turns with the column) times zeta^(s (n - m) / B) on the pair's axis."""
    n = q.shape[1] // 4  # pairs per axis
    pos = [(r, c) for r in range(rows) for c in range(cols)]
    centre = ((rows - 1) / 2, (cols - 1) / 2)
    out = torch.zeros(len(pos), len(pos))
    for i, pi in enumerate(pos):
        for j, pj in enumerate(pos):
            total = 0.
            for p in range(2 * n):
                axis, kk = (1, p) if p < n else (0, p - n)  # column pairs first
                freq, zeta = theta ** (-kk / n), (kk / n + gamma) / (1 + gamma)
                s = signs[axis]
                qa, ka = complex(*q[i, 2 * p:2 * p + 2].tolist()), complex(*k[j, 2 * p:2 * p + 2].tolist())
                ni, nj = pi[axis] - centre[axis], pj[axis] - centre[axis]  # centred positions on the pair's axis
                qa *= complex(math.cos(freq * pi[axis]), math.sin(freq * pi[axis])) * zeta ** (s * ni / base)
                ka *= complex(math.cos(freq * pj[axis]), math.sin(freq * pj[axis])) * zeta ** (-s * nj / base)
                total += (qa * ka.conjugate()).real
            out[i, j] = total
    return out


@pytest.mark.parametrize('shape', [(2, 3), (1, 5)])
def test_xpos_against_its_formula_per_head_direction(shape):
    pe = scheme('xpos', heads=4, scale_base=4.)
    grid = Grid(shape, 1)
    ctx = PosContext(pe, grid, pe.prepare(grid), device=torch.device('cpu'))
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, grid.num_tokens, 16), torch.randn(1, 4, grid.num_tokens, 16)
    qr, kr = pe.qk(q, k, ctx, 0)
    torch.testing.assert_close(qr[..., 0, :], q[..., 0, :])  # the prefix token is not moved
    logits = (qr @ kr.transpose(-1, -2))[0, :, 1:, 1:]
    for h, signs in enumerate([(1, 1), (-1, 1), (1, -1), (-1, -1)]):  # (row, col): bit a of h flips axis a
        want = xpos_reference(q[0, h, 1:], k[0, h, 1:], *shape, 100., 0.4, 4., signs)
        torch.testing.assert_close(logits[h], want, atol=1e-4, rtol=1e-4)
    if shape[0] == 1:  # 1 x N, head 0: the paper's causal 1D xPos decays with distance to earlier keys
        assert pe.prepare(grid).log_decay[0].lt(0).all()


@pytest.mark.parametrize('dim', [48, 64])  # head_dim 24: 4 pairs per axis; 32: rope_axial's uneven split (4, 6, 6)
def test_xpos_in_3d_matches_rope_axial_without_decay(dim):
    common = dict(dim=dim, num_heads=2, depth=2, grid_size=(4, 4, 4), num_prefix_tokens=1)
    pe = vitpe.create_pos_encoding('xpos', scale_base=1e12, **common)  # no decay left: axial RoPE in 3D
    ref = vitpe.create_pos_encoding('rope_axial', **common)
    grid = Grid((2, 3, 2), 1)
    q = torch.randn(2, 2, grid.num_tokens, dim // 2)
    ref_q, _ = ref.qk(q, q, PosContext(ref, grid, ref.prepare(grid)), 0)
    got_q, _ = pe.qk(q, q, PosContext(pe, grid, pe.prepare(grid)), 0)
    torch.testing.assert_close(got_q, ref_q)


# ------------------------------------------------------------------------ randomised positions
def test_random_positions_are_sorted_distinct_per_axis_and_per_sample():
    torch.manual_seed(0)
    pos = random_positions((3, 5), 4., batch=6)
    assert pos.shape == (6, 15, 2) and pos.dtype == torch.long
    grid = pos.reshape(6, 3, 5, 2)
    rows, cols = grid[:, :, 0, 0], grid[:, 0, :, 1]
    assert (rows.diff(dim=1) > 0).all() and (cols.diff(dim=1) > 0).all()  # sorted and distinct
    assert (grid[..., 0] == rows[:, :, None]).all() and (grid[..., 1] == cols[:, None, :]).all()  # a grid
    assert rows.max() < 12 and cols.max() < 20 and rows.min() >= 0
    assert len({tuple(c.tolist()) for c in cols}) > 1  # samples differ


@pytest.mark.parametrize('name', ['alibi', 'fire', 'kerple', 'lookhere'])
def test_random_positions_in_training_only_and_the_same_draw_in_every_layer(name):
    pe = scheme(name, random_positions=4, **({'layer_slopes': (1., 1.)} if name == 'lookhere' else {}))
    pe.eval()
    eval_bias = bias_of(pe, (2, 3), batch=3)
    assert eval_bias.shape[0] == 1  # one bias for the batch: the grid's own positions
    pe.train()
    torch.manual_seed(1)
    grid = Grid((2, 3), 1)
    st = pe.prepare(grid)
    ctx = PosContext(pe, grid, st, device=torch.device('cpu'))
    q = torch.zeros(3, 4, 7, 16)
    with torch.no_grad():
        first, again = pe.bias(q, q, ctx, 0), pe.bias(q, q, ctx, 1 if name != 'kerple' else 0)
    assert first.shape == (3, 4, 7, 7)
    pos = st.positions.of_batch(3)
    assert pos.shape == (3, 6, 2) and st.positions.extents == (8, 12)
    if name in ('alibi', 'lookhere'):  # parameter-free (one layer slope): the drawn positions' bias in every layer
        torch.testing.assert_close(first, again)
    if name == 'alibi':
        d = (pos[:, :, None].float() - pos[:, None].float()).norm(dim=-1)
        torch.testing.assert_close(first[:, 0, 1:, 1:], -d / 4)


def test_random_positions_in_xpos_and_errors():
    pe = scheme('xpos', random_positions=2).train()
    grid = Grid((2, 3), 1)
    ctx = PosContext(pe, grid, pe.prepare(grid), device=torch.device('cpu'))
    q = torch.randn(4, 4, 7, 16)
    qr, _ = pe.qk(q, q, ctx, 0)
    assert qr.shape == q.shape and torch.isfinite(qr).all()
    assert ctx.state.positions.of_batch(4).shape == (4, 6, 2)
    for bad in (0.5, -1, True, 'x'):
        with pytest.raises(ValueError, match='random_positions'):
            scheme('alibi', random_positions=bad)
    with pytest.raises(ValueError, match='distance'):
        scheme('kerple', distance='cosine')
    with pytest.raises(ValueError, match='directions'):
        scheme('lookhere', directions='up')
    with pytest.raises(ValueError, match='mode'):
        scheme('fire', mode='causal')


def test_grid_positions_in_eval_are_the_grid_and_pi_scales_them():
    pe = scheme('alibi', random_positions=4).eval()
    pos = GridPositions(pe, (2, 3), NO_STRATEGY, torch.device('cpu'))
    assert pos.extents == (2, 3) and pos.of_batch(5).shape == (1, 6, 2)
    pi = GridPositions(pe, (8, 8), vitpe.pe.ResolutionStrategy.parse('pi'), torch.device('cpu'))
    assert pi.coords(1)[0, -1].tolist() == [3.5, 3.5]  # the 8 x 8 grid squeezed into the 4 x 4 training grid's range


@pytest.mark.parametrize('name', ['alibi', 'fire', 'kerple', 'lookhere', 'xpos'])
def test_micro_model_trains_with_random_positions(name):
    m = micro(name, pos_enc_args=dict(random_positions=4)).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.parametrize('name', ['sincos', 'fourier', 'rope_axial', 'rope_mixed'])
def test_random_positions_in_the_schemes_with_coordinates(name):
    """Training with random_positions: per-sample positions (the output of one image depends on the draw, and the
    same draw gives the same output); evaluation: exactly the model without the option."""
    plain = micro(name)
    m = micro(name, pos_enc_args=dict(random_positions=4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x), rtol=0, atol=0)
        m.train()
        torch.manual_seed(3)
        a = m(x)
        torch.manual_seed(3)
        b = m(x)
        torch.manual_seed(4)
        c = m(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    m(x).sum().backward()  # trains
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_drawn_positions_enter_rope_axial_as_the_formula():
    """rope_axial with drawn positions rotates each sample by its own positions (compared with the rotation the
    scheme makes for those coordinates)."""
    pe = vitpe.create_pos_encoding('rope_axial', dim=64, num_heads=4, depth=2, grid_size=(4, 4), num_prefix_tokens=1,
                                   random_positions=4).train()
    grid = Grid((2, 3), 1)
    ctx = PosContext(pe, grid, pe.prepare(grid), device=torch.device('cpu'))
    q = torch.randn(3, 4, 7, 16)
    got, _ = pe.qk(q, q, ctx, 0)
    pos = ctx.state.positions.of_batch(3).float()
    from vitpe.pe.rotary import rotate_pairs
    for b in range(3):  # each channel pair: its axis's coordinate times its frequency
        rot = pe.with_prefix(pos[b][:, pe.pair_axis] * pe.freqs, 1)
        torch.testing.assert_close(got[b], rotate_pairs(q[b], rot))


def test_position_interpolation_scales_the_offsets():
    """'pi' at a 4 x 6 grid (the training grid 4 x 4): column offsets times 4/6, as the distances ALiBi sees."""
    pe = scheme('alibi')
    grid = Grid((4, 6), 0)
    strategy = vitpe.pe.ResolutionStrategy.parse('pi')
    ctx = PosContext(pe, grid, pe.prepare(grid, strategy), strategy, device=torch.device('cpu'))
    q = torch.zeros(1, 4, 24, 16)
    got = pe.bias(q, q, ctx, 0)[0, 0]
    rows, cols = torch.arange(24) // 6, (torch.arange(24) % 6) * 4 / 6
    d = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).sqrt()
    torch.testing.assert_close(got, -d / 4)
