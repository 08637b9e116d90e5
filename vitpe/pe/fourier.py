"""Learnable Fourier features (Li et al., "Learnable Fourier Features for Multi-Dimensional Spatial
Positional Encoding", NeurIPS 2021)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .base import PEState, PositionalEncoding
from .common import (GridPositions, add_to_patches, check_positive, check_positive_int, check_random_positions,
                     coord_grid)
from .registry import register_pos_encoding
from .strategy import NO_STRATEGY


@dataclass
class FourierState(PEState):
    coords: Optional[torch.Tensor]  # (N, rank), in units of the training grid (None: drawn, ``positions``)
    positions: Optional[GridPositions] = None


@register_pos_encoding
class FourierPE(PositionalEncoding):
    """Eq. 2 of the paper for a patch at coordinates x (rank M): r = 1/sqrt(F) [cos(x W_r^T) || sin(x W_r^T)],
    W_r in R^{F/2 x M} ~ N(0, gamma^-2), PE = MLP(r) (one hidden layer, GELU).

    The paper's ``G`` groups are several M-dimensional points of one position (e.g. a box's two corners),
    sharing W_r and the MLP; a patch has one point, so G = 1 here. ``feature_sets`` is not the paper's G: it
    splits the width into S parts, each with its own W_r and MLP over the same coordinates (an ensemble of
    S independent Fourier encodings, concatenated; S = 1 is the paper's model).

    Coordinates are patch indices divided by the training grid (``coord_unit``: the training grid spans
    [0, 1)), so a larger grid extends the coordinates instead of squeezing them (position interpolation does).

    3D (T, H, W): M = 3, coordinates (t / T, r / H, c / W). At T = 1 (t = 0) the t column of W_r drops out:
    the 2D form on the same W_r columns (tested, through a 2D checkpoint, whose W_r gets a zero t column).

    Options: num_features F (64), hidden_dim (32), gamma (1.0), feature_sets S (1; ``groups`` is its old,
    deprecated name), random_positions (0: off; a factor: randomised positions in training, ``GridPositions``).
    """
    name = 'fourier'
    hooks = frozenset({'tokens'})
    position_strategies = ('pi',)

    @classmethod
    def upgrade_options(cls, options):
        if 'groups' in options:
            warnings.warn("fourier: option 'groups' is renamed 'feature_sets' (independent Fourier encodings, not the "
                          "paper's groups); 'groups' will be removed in the next release", DeprecationWarning, 3)
            options['feature_sets'] = options.pop('groups')

    def __init__(self, *, num_features: int = 64, hidden_dim: int = 32, gamma: float = 1.0, feature_sets: int = 1,
                 random_positions: float = 0., **common):
        super().__init__(**common)
        check_random_positions(self.name, random_positions)
        self.random_positions = float(random_positions)
        for opt, v in (('num_features', num_features), ('hidden_dim', hidden_dim), ('feature_sets', feature_sets)):
            check_positive_int(self.name, opt, v)
        check_positive(self.name, 'gamma', gamma)
        if num_features % 2:
            raise ValueError(f"fourier: invalid num_features={num_features}; expected an even number")
        if self.dim % feature_sets:
            raise ValueError(f"fourier: invalid feature_sets={feature_sets}; dim={self.dim} must be divisible by it")
        self.num_features, self.feature_sets, self.gamma = num_features, feature_sets, gamma
        sets = feature_sets
        self.freqs = nn.Parameter(torch.randn(sets, num_features // 2, self.rank) / gamma)
        # coordinates are patch indices over this grid (the training grid): a persistent buffer, so a
        # checkpoint loaded at another resolution or ``set_input_size`` keeps the positions it learned
        self.register_buffer('coord_unit', torch.tensor(self.grid_size, dtype=torch.float32))
        self.unit = tuple(float(g) for g in self.grid_size)  # coord_unit as numbers (no tensor read per forward)
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(
            module, 'unit', tuple(module.coord_unit.tolist())))
        self.mlp = nn.Sequential(
            nn.Conv1d(sets * num_features, sets * hidden_dim, 1, groups=sets), nn.GELU(),
            nn.Conv1d(sets * hidden_dim, self.dim, 1, groups=sets))

    def inflate_state_dict(self, state_dict, prefix, mode='central'):
        """2D W_r (columns r, c) gets a t column of zeros (the 2D features on every frame); the coordinate unit
        gets the reference frames."""
        super().inflate_state_dict(state_dict, prefix, mode)
        f, unit = state_dict.get(prefix + 'freqs'), state_dict.get(prefix + 'coord_unit')
        if f is not None and f.shape[-1] == 2:
            state_dict[prefix + 'freqs'] = torch.cat([torch.zeros_like(f[..., :1]), f], -1)
        if unit is not None and unit.numel() == 2:
            state_dict[prefix + 'coord_unit'] = torch.cat([unit.new_tensor([self.grid_size[0]]), unit])

    def fourier_terms(self, coords: torch.Tensor) -> torch.Tensor:
        """r of Eq. 2 for (N, M) coordinates, (S, F, N), in float32 whatever the autocast dtype (positions times
        frequencies lose their fractional part in bf16)."""
        with torch.autocast(coords.device.type, enabled=False):
            proj = torch.einsum('...nm,gfm->...gfn', coords.float(), self.freqs.float())  # ([B,] S, F/2, N)
            return torch.cat([proj.cos(), proj.sin()], dim=-2) / math.sqrt(self.num_features)

    def features(self, coords: torch.Tensor) -> torch.Tensor:
        """Eq. 2 for (N, M) coordinates: (1, N, D) (for (B, N, M): (B, N, D); the MLP under the caller's autocast)."""
        lead = coords.shape[0] if coords.dim() == 3 else 1
        return self.mlp(self.fourier_terms(coords).reshape(lead, -1, coords.shape[-2])).transpose(1, 2)

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        if self.draws_positions:  # randomised positions in training, in units of the training grid
            return FourierState(None, GridPositions(self, grid.shape, strategy, device))
        if strategy.positions == 'pi':  # position interpolation: the test grid spans [0, 1) too
            scale = tuple(1. / g for g in grid.shape)
        else:
            scale = tuple(1. / u for u in self.unit)  # the training grid, carried by checkpoints
        coords = self.cached(('coords', grid.shape, scale, device),
                             lambda: coord_grid(grid.shape, device=device, scale=scale))
        return FourierState(coords)

    def tokens(self, x, ctx):
        state = ctx.state
        coords = state.coords if state.positions is None else (
            state.positions.coords(x.shape[0]) / torch.tensor(self.unit, device=x.device))
        return add_to_patches(x, self.features(coords), ctx.grid.num_prefix)
