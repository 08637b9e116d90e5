"""Decomposed relative position bias (MViTv2 ``cal_rel_pos_spatial``; ViTDet / SAM, timm
``vision_transformer_sam.get_decomposed_rel_pos_bias``): one table per axis of shape (2 size - 1, d),
logits_ij += <q_i, R_h[r_i - r_j]> + <q_i, R_w[c_i - c_j]> (+ <q_i, R_t[t_i - t_j]> in 3D), with q
unscaled. At another grid the tables are resampled linearly along their length, as SAM does."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from timm.layers import trunc_normal_

from .base import PositionalEncoding, register_pos_encoding
from .functional import coord_grid, relative_index, resample_1d


def grid_indices(shape, device=None):
    """What the decomposed bias needs of a grid: token coordinates (N, rank) and, per axis, the
    (size, size) index into a (2 size - 1) relative table."""
    return (coord_grid(shape, device=device, dtype=torch.long),
            [relative_index(s, s).to(device) for s in shape])


def decomposed_bias(q: torch.Tensor, tables, shape, rows: Optional[torch.Tensor] = None,
                    out: Optional[torch.Tensor] = None, indices=None) -> torch.Tensor:
    """Decomposed bias of some query tokens against all patch tokens of the grid ``shape``.

    q (B, c, d): the queries of patch tokens ``rows`` (flat indices; all N when None); tables: one
    (L_a, d) per axis. Returns (B, c, N), or adds into ``out`` (B, c, *shape) in place. Memory is
    O(c N), so callers can work in row chunks."""
    b, c, d = q.shape
    rank = len(shape)
    coords, rel_index = indices or grid_indices(shape, q.device)  # (N, rank), per axis (size, size)
    q_coords = coords if rows is None else coords[rows]
    if out is None:
        out = q.new_zeros(b, c, *shape)
    for a, (size, table) in enumerate(zip(shape, tables)):
        rel = resample_1d(table, 2 * size - 1).to(q.dtype)
        idx = rel_index[a][q_coords[:, a]]  # (c, size_k)
        proj = torch.einsum('bcd,ckd->bck', q, rel[idx])  # <q_i, R_a[i_a - j_a]> for every key coordinate j_a
        view = [b, c] + [1] * rank
        view[2 + a] = size
        out.add_(proj.reshape(view))
    return out.reshape(b, c, -1)


@register_pos_encoding
class DecomposedRelPos(PositionalEncoding):
    """Options: zero_init (tables start at zero, as SAM; False draws them from N(0, 0.02))."""
    name = 'decomposed'

    def __init__(self, *, zero_init: bool = True, **common):
        super().__init__(**common)
        if not isinstance(zero_init, bool):
            raise ValueError(f"decomposed: invalid zero_init={zero_init!r}; expected True or False")
        self.tables = nn.ParameterList([
            nn.Parameter(torch.zeros(self.depth, 2 * s - 1, self.head_dim)) for s in self.grid_size])
        if not zero_init:
            for t in self.tables:
                trunc_normal_(t, std=.02)

    def prepare(self, grid):
        self.check_grid(grid)
        return {'indices': self.cached(('indices', grid.shape), lambda: grid_indices(grid.shape, self.scheme.device))}

    def bias(self, q, k, ctx, layer, rows=slice(None)):
        p = ctx.grid.num_prefix
        b, h, c, d = q.shape
        n = k.shape[2]
        first = range(n)[rows].start  # rows is a contiguous slice; prefix rows come first
        skip = max(p - first, 0)  # prefix rows in this chunk: no bias to or from prefix tokens
        bias = q.new_zeros(b, h, c, n)
        if skip < c:
            target = bias[:, :, skip:, p:].unflatten(-1, ctx.grid.shape).flatten(0, 1)  # a view
            rows_patch = torch.arange(first + skip - p, first + c - p, device=q.device)
            decomposed_bias(q[:, :, skip:].flatten(0, 1), [t[layer] for t in self.tables], ctx.grid.shape,
                            rows_patch, out=target, indices=ctx.state['indices'])
        return bias

    def resize_state_dict(self, state_dict, prefix):
        for a, size in enumerate(self.grid_size):
            key = f'{prefix}tables.{a}'
            if key in state_dict and state_dict[key].shape[1] != 2 * size - 1:
                t = state_dict[key]
                state_dict[key] = torch.stack([resample_1d(t[i], 2 * size - 1) for i in range(t.shape[0])])
