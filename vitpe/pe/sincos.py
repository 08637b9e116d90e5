"""Fixed 2D / 3D sin-cos position embedding (MAE, He et al. 2022; timm ``build_sincos2d_pos_embed``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PEState, PositionalEncoding
from .common import add_to_patches, check_positive, sincos_embed
from .registry import register_pos_encoding
from .strategy import NO_STRATEGY, position_scale


@dataclass
class SinCosState(PEState):
    pos: torch.Tensor  # (1, N, D)


@register_pos_encoding
class SinCosPE(PositionalEncoding):
    """The width is split over the axes, each part [sin(p w_k), cos(p w_k)] with w_k = 1/temperature^(k/(D/2r)).
    Recomputed for every grid (position interpolation scales p into the reference range).

    Options: temperature (10000).
    """
    name = 'sincos'
    hooks = frozenset({'tokens'})
    position_strategies = ('pi',)

    def __init__(self, *, temperature: float = 10000., **common):
        super().__init__(**common)
        check_positive(self.name, 'temperature', temperature)
        self.temperature = temperature
        sincos_embed(self.grid_size, self.dim)  # validates dim against the rank

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        scale = position_scale(self.grid_size, grid.shape, strategy)
        pos = self.cached(('sincos', grid.shape, scale, device), lambda: sincos_embed(
            grid.shape, self.dim, self.temperature, device=device, scale=scale)[None])
        return SinCosState(pos)

    def tokens(self, x, ctx):
        return add_to_patches(x, ctx.state.pos, ctx.grid.num_prefix)
