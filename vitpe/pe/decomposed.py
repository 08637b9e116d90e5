"""Decomposed relative position bias (MViTv2 ``cal_rel_pos_spatial``; ViTDet / SAM, timm
``vision_transformer_sam.get_decomposed_rel_pos_bias``): one table per axis of shape (2 size - 1, d),
logits_ij += <q_i, R_h[r_i - r_j]> + <q_i, R_w[c_i - c_j]> (+ <q_i, R_t[t_i - t_j]> in 3D), with q
unscaled. At another grid the tables are resampled linearly along their length, as SAM does."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn
from timm.layers import trunc_normal_

from .base import PEState, PositionalEncoding
from .common import check_bool, coord_grid, grid_bias, resample_1d
from .registry import register_pos_encoding
from .strategy import NO_STRATEGY


def relative_index(size_q: int, size_k: int) -> torch.Tensor:
    """SAM / MViTv2 index into a (2 max(q, k) - 1) relative table for every (q, k) pair along one axis."""
    q = torch.arange(size_q, dtype=torch.float32)[:, None] * max(size_k / size_q, 1.0)
    k = torch.arange(size_k, dtype=torch.float32)[None, :] * max(size_q / size_k, 1.0)
    return ((q - k) + (size_k - 1) * max(size_q / size_k, 1.0)).long()


@dataclass
class GridIndices(PEState):
    """What the decomposed bias needs of a grid: token coordinates (N, rank) and, per axis, the
    (size, size) index into a (2 size - 1) relative table."""
    coords: torch.Tensor
    rel_index: List[torch.Tensor]

    @classmethod
    def of(cls, shape, device=None) -> 'GridIndices':
        return cls(coord_grid(shape, device=device, dtype=torch.long), [relative_index(s, s).to(device) for s in shape])


def decomposed_bias(q: torch.Tensor, tables, shape, rows: Optional[torch.Tensor] = None,
                    out: Optional[torch.Tensor] = None, indices: Optional[GridIndices] = None,
                    table_lengths: Optional[List[int]] = None) -> torch.Tensor:
    """Decomposed bias of some query tokens against all patch tokens of the grid ``shape``.

    q (B, c, d): the queries of patch tokens ``rows`` (flat indices; all N when None); tables: one
    (L_a, d) per axis (``table_lengths``: their L_a when the caller knows them, needed under FX tracing).
    Returns (B, c, N), or adds into ``out`` (B, c, *shape) in place. Memory is O(c N), so callers can work
    in row chunks."""
    rank = len(shape)
    indices = indices or GridIndices.of(shape, q.device)
    q_coords = indices.coords if rows is None else indices.coords[rows]
    if out is None:
        out = q.new_zeros(*q.shape[:2], *shape)
    lengths = table_lengths or [t.shape[0] for t in tables]
    for a, (size, table, length) in enumerate(zip(shape, tables, lengths)):
        rel = resample_1d(table, 2 * size - 1, length).to(q.dtype)
        idx = indices.rel_index[a][q_coords[:, a]]  # (c, size_k)
        proj = torch.einsum('bcd,ckd->bck', q, rel[idx])  # <q_i, R_a[i_a - j_a]> for every key coordinate j_a
        view = [1] * rank
        view[a] = size
        out = out.add_(proj.unflatten(-1, view))  # the returned tensor carries the write (FX keeps it)
    return out.flatten(2)


@register_pos_encoding
class DecomposedRelPos(PositionalEncoding):
    """Options: zero_init (False, the default: tables drawn from N(0, 0.02) truncated, as MViTv2, whose
    config leaves REL_POS_ZERO_INIT off; True: tables start at zero, as ViTDet and SAM). From zero the bias path
    passes q no gradient until the tables grow: the study's micro ViT sat at chance for 10 of its 20 epochs in
    one of three seeds with zero tables, and left chance by epoch 5 with drawn ones.

    3D (T, H, W): a temporal table R_t (2 T - 1, d) next to R_h and R_w. At T = 1 its one row adds <q_i, R_t[0]>
    to every key of query i, which softmax ignores: the same output as the 2D form (a 2D checkpoint inflates it
    to zero)."""
    name = 'decomposed'
    hooks = frozenset({'bias'})

    def __init__(self, *, zero_init: bool = False, **common):
        super().__init__(**common)
        check_bool(self.name, 'zero_init', zero_init)
        self.tables = nn.ParameterList([
            nn.Parameter(torch.zeros(self.depth, 2 * s - 1, self.head_dim)) for s in self.grid_size])
        if not zero_init:
            for t in self.tables:
                trunc_normal_(t, std=.02)

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        return self.cached(('indices', grid.shape, device), lambda: GridIndices.of(grid.shape, device))

    def bias(self, q, k, ctx, layer, rows=slice(None)):
        b, h = q.shape[:2]
        shape = ctx.grid.shape

        def add_patch_part(skip, patch_rows, out):  # no bias to or from prefix tokens
            target = out.unflatten(-1, shape).flatten(0, 1)  # a view of (B H, c', *shape)
            written = decomposed_bias(q[:, :, skip:].flatten(0, 1), [t[layer] for t in self.tables], shape,
                                      patch_rows, out=target, indices=ctx.state, table_lengths=lengths)
            return written.unflatten(0, (b, h))
        lengths = [self.tables._parameters[str(a)].shape[1] for a in range(len(shape))]  # ints, also when tracing
        return grid_bias(rows, ctx.grid, (b, h), add_patch_part, 0., dtype=q.dtype, device=ctx.device)

    def inflate_state_dict(self, state_dict, prefix, mode='central'):
        """2D tables (h, w) become tables 1 and 2; the temporal table 0 starts at zero (no bias along time)."""
        if f'{prefix}tables.2' not in state_dict and f'{prefix}tables.1' in state_dict:
            state_dict[f'{prefix}tables.2'] = state_dict[f'{prefix}tables.1']
            state_dict[f'{prefix}tables.1'] = state_dict[f'{prefix}tables.0']
            state_dict[f'{prefix}tables.0'] = torch.zeros_like(self.tables[0])

    def resize_state_dict(self, state_dict, prefix):
        for a, size in enumerate(self.grid_size):
            key = f'{prefix}tables.{a}'
            if key in state_dict and state_dict[key].shape[1] != 2 * size - 1:
                t = state_dict[key]
                state_dict[key] = torch.stack([resample_1d(t[i], 2 * size - 1) for i in range(t.shape[0])])
