"""Fixed 2D / 3D sin-cos position embedding (MAE, He et al. 2022; timm ``build_sincos2d_pos_embed``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .base import PEState, PositionalEncoding
from .common import GridPositions, add_to_patches, check_positive, check_random_positions, sincos_embed, sincos_of
from .registry import register_pos_encoding
from .strategy import NO_STRATEGY, position_scale


@dataclass
class SinCosState(PEState):
    pos: Optional[torch.Tensor]  # (1, N, D) (None: positions drawn per sample, ``positions``)
    positions: Optional[GridPositions] = None


@register_pos_encoding
class SinCosPE(PositionalEncoding):
    """The width is split over the axes, each part [sin(p w_k), cos(p w_k)] with w_k = 1/temperature^(k/(D/2r)).
    Recomputed for every grid (position interpolation scales p into the reference range).

    Options: temperature (10000), random_positions (0: off; a factor: randomised positions in training,
    ``common.GridPositions``).
    """
    name = 'sincos'
    hooks = frozenset({'tokens'})
    position_strategies = ('pi',)

    def __init__(self, *, temperature: float = 10000., random_positions: float = 0., **common):
        super().__init__(**common)
        check_positive(self.name, 'temperature', temperature)
        check_random_positions(self.name, random_positions)
        self.temperature, self.random_positions = temperature, float(random_positions)
        sincos_embed(self.grid_size, self.dim)  # validates dim against the rank

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        if self.draws_positions:
            return SinCosState(None, GridPositions(self, grid.shape, strategy, device))
        scale = position_scale(self.grid_size, grid.shape, strategy)
        pos = self.cached(('sincos', grid.shape, scale, device), lambda: sincos_embed(
            grid.shape, self.dim, self.temperature, device=device, scale=scale)[None])
        return SinCosState(pos)

    def tokens(self, x, ctx):
        state = ctx.state
        pos = state.pos if state.positions is None else sincos_of(state.positions.coords(x.shape[0]), self.dim,
                                                                   self.temperature)
        return add_to_patches(x, pos, ctx.grid.num_prefix)
