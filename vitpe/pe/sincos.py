"""Fixed 2D / 3D sin-cos position embedding (MAE, He et al. 2022; timm ``build_sincos2d_pos_embed``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .base import PEState, PositionalEncoding
from .common import (GridPositions, add_to_patches, axis_split, check_positive, check_random_positions,
                     sincos_embed, sincos_of)
from .registry import register_pos_encoding
from .strategy import NO_STRATEGY, position_scale


@dataclass
class SinCosState(PEState):
    pos: Optional[torch.Tensor]  # (1, N, D) (None: positions drawn per sample, ``positions``)
    positions: Optional[GridPositions] = None


@register_pos_encoding
class SinCosPE(PositionalEncoding):
    """The width is split over the axes, the part of axis a [sin(p w_k), cos(p w_k)] with w_k =
    1/temperature^(k/n_a), k < n_a, n_a frequencies for axis a (D/2r each when the rank r divides D/2).
    Recomputed for every grid (position interpolation scales p into the reference range).

    3D (T, H, W): the width is split over t, h, w (``split``; by default evenly, or when D/2 is not a multiple
    of 3, ceil(D/6) frequencies to each of h and w and the rest to t). It does not reduce to the 2D form at
    T = 1: the t part is the constant [sin 0, cos 0] = [0, 1] and h and w have fewer channels; what holds is
    that the h, w channels are the 2D embedding of width 2 (n_h + n_w) (tested).

    Options: temperature (10000); split (frequencies per axis in grid order, e.g. (10, 11, 11) for 3D at
    D = 64; None: as above); random_positions (0: off; a factor: randomised positions in training,
    ``common.GridPositions``).
    """
    name = 'sincos'
    hooks = frozenset({'tokens'})
    position_strategies = ('pi',)
    temporal_strategies = ('pi_t',)

    def __init__(self, *, temperature: float = 10000., split: Optional[Sequence[int]] = None,
                 random_positions: float = 0., **common):
        super().__init__(**common)
        check_positive(self.name, 'temperature', temperature)
        check_random_positions(self.name, random_positions)
        self.temperature, self.random_positions = temperature, float(random_positions)
        self.split = axis_split(self.dim // 2, self.rank, split, f"sincos: dim={self.dim}")

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        if self.draws_positions:
            return SinCosState(None, GridPositions(self, grid.shape, strategy, device))
        scale = position_scale(self.grid_size, grid.shape, strategy)
        pos = self.cached(('sincos', grid.shape, scale, device), lambda: sincos_embed(
            grid.shape, self.dim, self.temperature, device=device, scale=scale, split=self.split)[None])
        return SinCosState(pos)

    def tokens(self, x, ctx):
        state = ctx.state
        pos = state.pos if state.positions is None else sincos_of(state.positions.coords(x.shape[0]), self.dim,
                                                                   self.temperature, self.split)
        return add_to_patches(x, pos, ctx.grid.num_prefix)
