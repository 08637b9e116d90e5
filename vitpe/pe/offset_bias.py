"""Attention biases that depend only on the offset between two patch positions (ALiBi, FIRE, KERPLE, LookHere):
the bias path they share.

A scheme defines ``offset_bias(offsets, layer, positions) -> (heads, M)``: its bias for each of M offsets
(``offsets`` (M, rank) float32, query position minus key position, position interpolation applied). ``prepare``
evaluates it once per forward (and layer, when the scheme's parameters are per layer) on every offset the
positions of this forward can have: positions along axis a lie in range(E_a), so the offsets form a
(2 E_a - 1) x ... grid (729 offsets for a 14 x 14 grid, 16129 at 64 x 64). ``bias`` then gathers the
(heads, rows, N) block of each row chunk from that table by a linear index, as iRPE looks up its buckets: the
offset of the pair (i, j) sits at lin[i] - lin[j] + centre, lin being a position's row-major index in the offset
grid. So a bias costs one gather per layer and O(rows x N) memory, through ``common.grid_bias`` (no bias to or
from prefix tokens), and the row chunks of the trunk's attention.

With randomised positions in training (``random_positions``, ``common.GridPositions``) the positions are drawn
per sample, the offset grid spans the larger range, and the bias is per sample (B, heads, rows, N).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from .base import PEState, PositionalEncoding
from .common import GridPositions, check_choice, check_random_positions, coord_grid, grid_bias
from .strategy import NO_STRATEGY

DISTANCES = ('euclidean', 'manhattan')


def pair_distance(offsets: torch.Tensor, kind: str = 'euclidean') -> torch.Tensor:
    """Distance of each offset (..., rank): Euclidean sqrt(sum d_a^2) or Manhattan sum |d_a|."""
    if kind == 'manhattan':
        return offsets.abs().sum(-1)
    return offsets.square().sum(-1).sqrt()


def offset_grid(extents: Sequence[int], device=None) -> torch.Tensor:
    """Every offset between two positions in range(E_a) per axis, (prod(2 E_a - 1), rank) long, row major from
    -(E_a - 1) to E_a - 1 on every axis."""
    grid = coord_grid([2 * e - 1 for e in extents], device=device, dtype=torch.long)
    return grid - torch.tensor([e - 1 for e in extents], device=device, dtype=torch.long)


def offset_strides(extents: Sequence[int]) -> Tuple[List[int], int]:
    """Row-major strides of the offset grid of ``extents`` and the index of the zero offset."""
    strides = [1] * len(extents)
    for a in range(len(extents) - 2, -1, -1):
        strides[a] = strides[a + 1] * (2 * extents[a + 1] - 1)
    return strides, sum((e - 1) * s for e, s in zip(extents, strides))


def linear_index(positions: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """Row-major index in the offset grid of integer positions (..., rank): sum_a position_a * stride_a."""
    return sum(positions[..., a] * s for a, s in enumerate(strides))


def straight_through_clamp(x: torch.Tensor, low: float, high: float = math.inf) -> torch.Tensor:
    """x clamped to [low, high] in the forward, with the gradient of x (KERPLE clamps its parameters' data in
    place after each step; this keeps the same values without stopping the gradient of a clamped entry)."""
    return x + (x.clamp(low, high) - x).detach()


@dataclass
class OffsetTables(PEState):
    positions: GridPositions
    tables: torch.Tensor  # (layers | 1, heads, M) float32: the bias of every offset
    strides: List[int]
    centre: int


class OffsetBiasPE(PositionalEncoding):
    """Base of the schemes whose bias is a function of the offset between positions. Subclasses set ``per_layer``
    (an instance attribute: whether ``offset_bias`` differs per layer) and define ``offset_bias``."""
    hooks = frozenset({'bias'})
    position_strategies = ('pi',)
    cache_tokens: int = 1024  # grids up to this many patches keep their offset index cached (as irpe's ids)

    def __init__(self, *, random_positions: float = 0., **common):
        super().__init__(**common)
        check_random_positions(self.name, random_positions)
        self.random_positions = float(random_positions)
        self.per_layer = False

    def offset_bias(self, offsets: torch.Tensor, layer: int, positions: GridPositions) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def check_distance(scheme: str, distance: str) -> None:
        check_choice(scheme, 'distance', distance, DISTANCES)

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        positions = GridPositions(self, grid.shape, strategy, device)
        extents = positions.extents
        offsets = self.cached(('offsets', extents, device), lambda: offset_grid(extents, device)).float()
        if positions.scale is not None:
            offsets = offsets * torch.tensor(positions.scale, device=device)
        with torch.autocast(device.type, enabled=False):  # biases of far offsets in float32
            tables = torch.stack([self.offset_bias(offsets, layer, positions).float()
                                  for layer in range(self.depth if self.per_layer else 1)])
        strides, centre = offset_strides(extents)
        return OffsetTables(positions, tables, strides, centre)

    def bias(self, q, k, ctx, layer, rows=slice(None)):
        state = ctx.state
        pos = state.positions.of_batch(q.shape[0])  # (1 | B, N, rank)
        table = state.tables[layer if self.per_layer else 0]  # (heads, M)

        def offset_index(patch_rows):  # (1 | B, c, N): the offset-table index of every (query row, key) pair
            lin = linear_index(pos, state.strides)  # (1 | B, N)
            return lin[:, patch_rows, None] - lin[:, None, :] + state.centre

        def add_patch_part(skip, patch_rows, out):  # out: (1 | B, heads, c, N)
            if not self.draws_positions and ctx.grid.num_patches <= self.cache_tokens:  # the grid's own positions:
                # the same index in every layer and forward (grids up to cache_tokens; larger ones per chunk)
                index = self.cached(('offset_index', ctx.grid, rows.start, rows.stop, ctx.device),
                                    lambda: offset_index(patch_rows))
            else:
                index = offset_index(patch_rows)
            return out.copy_(table[:, index].transpose(0, 1))
        return grid_bias(rows, ctx.grid, (pos.shape[0], self.num_heads), add_patch_part, 0., dtype=q.dtype,
                         device=ctx.device)

    def score_mod(self, ctx, layer, bias_scale=1.0, dtype=torch.float32):
        """The same bias for FlexAttention: score + table[h, offset index of (q, k)], 0 with a prefix token; the
        offset index as in ``bias``, from per-token index tensors cached per grid (the closure holds tensors only,
        so a compiled flex does not specialise on Python numbers). Randomised positions (a bias per sample) stay
        on the bias path."""
        if self.draws_positions:
            return None
        state = ctx.state
        query_index, key_index, is_patch, last = self.cached(
            ('flex_index', ctx.grid, ctx.device), lambda: self.flex_index(state, ctx.grid.num_prefix))
        table = (state.tables[layer if self.per_layer else 0] * bias_scale).to(dtype)  # (heads, M)

        def add_bias(score, b, h, q_idx, kv_idx):
            index = (query_index[q_idx] - key_index[kv_idx]).clamp(0, last)  # in range for prefix pairs too
            bias = table[h, index].to(score.dtype)
            return score + torch.where(is_patch[q_idx] & is_patch[kv_idx], bias, torch.zeros_like(bias))
        return add_bias

    @staticmethod
    def flex_index(state: OffsetTables, num_prefix: int):
        """Per token (prefix first): the query's and the key's part of the offset index (a patch pair's index is
        their difference), whether it is a patch, and the table's last index."""
        lin = linear_index(state.positions.of_batch(1)[0], state.strides)  # (N_patch,)
        prefix = lin.new_zeros(num_prefix)
        is_patch = torch.cat([prefix.bool(), torch.ones_like(lin, dtype=torch.bool)])
        last = torch.tensor(state.tables.shape[-1] - 1, device=lin.device)
        return torch.cat([prefix, lin + state.centre]), torch.cat([prefix, lin]), is_patch, last

    def extra_repr(self) -> str:
        extra = f", random_positions={self.random_positions}" if self.random_positions else ''
        return super().extra_repr() + extra
