"""Pure functions shared by the schemes: coordinate grids, sin-cos bands, rotations, iRPE buckets,
table resampling. Every function takes the grid shape as a tuple of any rank ((T,) H, W)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

INTERPOLATIONS_2D = ('bicubic', 'bilinear', 'nearest', 'area')
_INTERP_3D = ('trilinear', 'nearest', 'area')


def coord_grid(shape: Sequence[int], device=None, dtype=torch.float32, scale: Optional[Sequence[float]] = None):
    """Integer coordinates of every cell of ``shape``, row major: (prod(shape), rank).

    Column ``a`` holds the index along axis ``a`` (so for (H, W): column 0 = row r, column 1 = col c),
    optionally multiplied by ``scale[a]`` (position interpolation)."""
    axes = [torch.arange(s, device=device, dtype=torch.float32) for s in shape]
    if scale is not None:
        axes = [a * float(f) for a, f in zip(axes, scale)]
    return torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1).reshape(-1, len(shape)).to(dtype)


def sincos_embed(shape: Sequence[int], dim: int, temperature: float = 10000., device=None,
                 scale: Optional[Sequence[float]] = None) -> torch.Tensor:
    """MAE-style fixed sin-cos embedding, (prod(shape), dim).

    The width is split evenly over the axes, last axis first (MAE puts the column first for 2D);
    each part is [sin(p * w_k), cos(p * w_k)], w_k = 1 / temperature^(k / (part / 2))."""
    rank = len(shape)
    part = dim // rank
    if part % 2 or part * rank != dim:
        raise ValueError(f"sincos: dim={dim} must split into {rank} even parts (one per axis)")
    coords = coord_grid(shape, device=device, scale=scale)
    omega = 1. / temperature ** (torch.arange(part // 2, device=device, dtype=torch.float32) / (part / 2.))
    embs = []
    for a in reversed(range(rank)):
        ang = coords[:, a:a + 1] * omega
        embs += [ang.sin(), ang.cos()]
    return torch.cat(embs, dim=1)


def resample_table(table: torch.Tensor, new_shape: Sequence[int], interpolation: str = 'bicubic',
                   antialias: bool = True) -> torch.Tensor:
    """Resample a channels-last table (1, *old_shape, C) to (1, *new_shape, C), as timm's
    ``resample_abs_pos_embed`` does for 2D (bicubic, antialias). 3D tables use trilinear."""
    old_shape = tuple(table.shape[1:-1])
    new_shape = tuple(int(s) for s in new_shape)
    if old_shape == new_shape:
        return table
    rank = len(old_shape)
    if rank == 3 and interpolation in ('bicubic', 'bilinear'):
        interpolation = 'trilinear'
    choices = INTERPOLATIONS_2D if rank == 2 else _INTERP_3D
    if interpolation not in choices:
        raise ValueError(f"interpolation={interpolation!r} is not available for a rank-{rank} table; "
                         f"expected one of {list(choices)}")
    kw = {}
    if interpolation in ('bicubic', 'bilinear'):
        kw['antialias'] = antialias
    dtype = table.dtype
    x = table.float().movedim(-1, 1)
    x = F.interpolate(x, size=new_shape, mode=interpolation, **kw)
    return x.movedim(1, -1).to(dtype)


def resample_1d(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling of a (L, C) table along L (SAM / ViTDet relative tables)."""
    if table.shape[0] == length:
        return table
    x = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode='linear')
    return x[0].t().to(table.dtype)


# --------------------------------------------------------------------------------------------- RoPE
def rope_axial_freqs(head_dim: int, rank: int, theta: float) -> torch.Tensor:
    """Frequencies of axial RoPE: 1 / theta^(k / n), k < n with n = head_dim / (2 * rank) per axis
    (RoPE-ViT Eq. 10; timm ``freq_bands(head_dim // 4, temperature=theta, step=1)`` for 2D)."""
    n = head_dim // (2 * rank)
    if n * 2 * rank != head_dim:
        raise ValueError(f"rope_axial: head_dim={head_dim} must be divisible by {2 * rank} for a rank-{rank} grid")
    return 1. / theta ** (torch.arange(n, dtype=torch.float32) / n)


def rope_axial_angles(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(N, head_dim/2) angles. Channel pairs are grouped by axis, last axis first, so for 2D the
    first half of the pairs rotates with the column c, the second with the row r (timm 'xy')."""
    rank = coords.shape[1]
    return torch.cat([coords[:, a:a + 1] * freqs for a in reversed(range(rank))], dim=1)


def rope_mixed_init(head_dim: int, depth: int, num_heads: int, rank: int, theta: float) -> torch.Tensor:
    """Learnable frequencies of mixed RoPE, (rank, depth, num_heads, head_dim/2), axis order as ``coord_grid``
    reversed (x first). Magnitudes 1/theta^(4k/d); each (layer, head) gets a random orthonormal set of
    ``rank`` directions, one per contiguous chunk of channel pairs (RoPE-ViT ``init_random_2d_freqs``:
    for 2D the directions are phi and phi + pi/2)."""
    pairs = head_dim // 2
    chunk = pairs // rank
    if chunk * rank != pairs:
        raise ValueError(f"rope_mixed: head_dim={head_dim} must be divisible by {2 * rank} for a rank-{rank} grid")
    mag = 1. / theta ** (torch.arange(0, head_dim, 2 * rank, dtype=torch.float32) / head_dim)  # (chunk,)
    if rank == 2:
        phi = torch.rand(depth, num_heads, 1) * 2 * math.pi
        dirs = torch.stack([torch.stack([phi.cos(), phi.sin()], -1),
                            torch.stack([(phi + math.pi / 2).cos(), (phi + math.pi / 2).sin()], -1)], 2)
        dirs = dirs.squeeze(3)  # (depth, heads, chunk_id, axis)
    else:
        dirs = torch.linalg.qr(torch.randn(depth, num_heads, rank, rank))[0].transpose(-1, -2)
    # freqs[axis, l, h, chunk_id * chunk + k] = dirs[l, h, chunk_id, axis] * mag[k]
    f = dirs.permute(3, 0, 1, 2).unsqueeze(-1) * mag
    return f.flatten(-2).contiguous()


def rope_mixed_angles(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Angles c*f_x + r*f_y (+ t*f_t): coords (N, rank) in ``coord_grid`` order, freqs (rank, ..., P)
    with axis 0 = x (last coordinate). Returns (..., N, P), computed in float32."""
    rank = coords.shape[1]
    ang = 0
    for i in range(rank):
        ang = ang + coords[:, rank - 1 - i, None].float() * freqs[i].float().unsqueeze(-2)
    return ang


def rotate_pairs(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (x0, x1), (x2, x3), ... by per-pair unit complex numbers
    ``rot`` (..., P) = exp(i angle): (x0 + i x1) * rot, one complex product in float32, returned in x's dtype."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


# --------------------------------------------------------------------------------------------- iRPE
def piecewise_index(rel: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """iRPE's piecewise index g(x) (Wu et al. 2021, Eq. 18): round(x) for |x| <= alpha, else
    sign(x) * min(beta, round(alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha)))."""
    rel = rel.float()
    a = rel.abs()
    far = torch.sign(rel) * (alpha + torch.log(a.clamp(min=1e-12) / alpha) / math.log(gamma / alpha)
                             * (beta - alpha)).round().clamp(max=beta)
    return torch.where(a <= alpha, rel.round(), far).long()


IRPE_METHODS = ('euclidean', 'quant', 'cross', 'product')


def irpe_num_buckets(method: str, beta: float, rank: int = 2) -> int:
    """Buckets per table, without the extra prefix bucket ((2 beta + 1)^rank for product)."""
    b = int(beta)
    return (2 * b + 1) ** rank if method == 'product' else 2 * b + 1


def irpe_offset_buckets(diff: torch.Tensor, method: str, alpha: float, beta: float, gamma: float,
                        axis: Optional[int] = None) -> torch.Tensor:
    """Bucket id of each offset ``diff`` (..., rank) = query coordinates - key coordinates.

    euclidean: g(round(|d|)); quant: g(|d|^2); product: mixed-radix over axes of g(d_a) + beta;
    cross: g(d_axis) for the one ``axis`` (the caller sums one table per axis).
    Non-product ids are shifted by beta so that they start at 0, as in the reference code."""
    b = int(beta)
    if method == 'euclidean':
        return piecewise_index(diff.square().sum(-1).sqrt().round(), alpha, beta, gamma) + b
    if method == 'quant':
        return piecewise_index(diff.square().sum(-1), alpha, beta, gamma) + b
    if method == 'cross':
        return piecewise_index(diff[..., axis], alpha, beta, gamma) + b
    if method == 'product':
        ids = torch.zeros(diff.shape[:-1], dtype=torch.long, device=diff.device)
        for a in range(diff.shape[-1]):
            ids = ids * (2 * b + 1) + piecewise_index(diff[..., a], alpha, beta, gamma) + b
        return ids
    raise ValueError(f"irpe: unknown method {method!r}; expected one of {list(IRPE_METHODS)}")


def irpe_offset_lookup(shape: Sequence[int], method: str, alpha: float, beta: float, gamma: float, device=None,
                       axis: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(table, lin, centre) for ``irpe_bucket_ids``. The bucket depends on the offset only, so it is
    computed once for each of the (2S-1)^rank offsets (``table``, flat, row major). ``lin`` is each
    cell's row-major index in that offset grid; being linear in the coordinates, the offset of the pair
    (i, j) sits at table[lin[i] - lin[j] + centre]."""
    offsets = coord_grid([2 * s - 1 for s in shape], device=device) - torch.tensor(
        [s - 1 for s in shape], device=device, dtype=torch.float32)
    table = irpe_offset_buckets(offsets, method, alpha, beta, gamma, axis)
    strides = [1] * len(shape)
    for a in range(len(shape) - 2, -1, -1):
        strides[a] = strides[a + 1] * (2 * shape[a + 1] - 1)
    lin = (coord_grid(shape, device=device, dtype=torch.long) * torch.tensor(strides, device=device)).sum(-1)
    return table, lin, sum((s - 1) * st for s, st in zip(shape, strides))


def irpe_bucket_ids(shape: Sequence[int], method: str, alpha: float, beta: float, gamma: float,
                    device=None, axis: Optional[int] = None, rows: Optional[torch.Tensor] = None,
                    keys_first: bool = False, lookup: Optional[tuple] = None) -> torch.Tensor:
    """(rows, N) bucket ids of (query, key) pairs of patch tokens for an iRPE method; ``rows`` are flat
    query indices (all N when None), so large grids can be done a chunk of queries at a time. With
    ``keys_first`` the result is (N, rows): the bucket of (key j as query, query i as key), i.e. of
    the offset k_j - q_i (iRPE on queries). Ids are looked up by offset (``irpe_offset_lookup``; pass
    ``lookup`` to reuse one for the same grid, method and axis)."""
    table, lin, centre = lookup if lookup is not None else irpe_offset_lookup(
        shape, method, alpha, beta, gamma, device, axis)
    q_lin = lin if rows is None else lin[rows]
    if keys_first:
        return table[(lin + centre)[:, None] - q_lin[None, :]]
    return table[(q_lin + centre)[:, None] - lin[None, :]]


def relative_index(size_q: int, size_k: int) -> torch.Tensor:
    """SAM / MViTv2 index into a (2 max(q, k) - 1) relative table for every (q, k) pair along one axis."""
    q = torch.arange(size_q, dtype=torch.float32)[:, None] * max(size_k / size_q, 1.0)
    k = torch.arange(size_k, dtype=torch.float32)[None, :] * max(size_q / size_k, 1.0)
    return ((q - k) + (size_k - 1) * max(size_q / size_k, 1.0)).long()
