"""Schemes that add a position embedding to the tokens once, after patch embedding:
none (NoPE), ape (learned table), sincos (fixed), abswin (global + window tables), fourier (learned features)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from timm.layers import trunc_normal_

from .base import PosContext, PositionalEncoding, check_choice, check_positive, register_pos_encoding
from .functional import INTERPOLATIONS_2D, coord_grid, resample_table, sincos_embed

INTERPOLATIONS = INTERPOLATIONS_2D


def add_to_patches(x: torch.Tensor, pos: torch.Tensor, num_prefix: int,
                   prefix_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, p + N, D) plus pos (1, N, D) on the patch tokens (and prefix_pos (1, p, D) on the prefix)."""
    if prefix_pos is not None:
        return x + torch.cat([prefix_pos, pos], dim=1).to(x.dtype)
    if not num_prefix:
        return x + pos.to(x.dtype)
    return torch.cat([x[:, :num_prefix], x[:, num_prefix:] + pos.to(x.dtype)], dim=1)


@register_pos_encoding
class NoPE(PositionalEncoding):
    """No positional information at all (NoPE). Patch embedding is a non-overlapping projection, so
    the model is blind to where a patch is."""
    name = 'none'

    def __init__(self, **common):
        super().__init__(**common)


def cached_resample(pe: PositionalEncoding, table: torch.Tensor, shape, interpolation: str) -> torch.Tensor:
    """``resample_table`` that is memoised by the scheme when no gradient is needed (inference sweeps)."""
    if tuple(table.shape[1:-1]) == tuple(shape):
        return table
    if torch.is_grad_enabled() and table.requires_grad:
        return resample_table(table, shape, interpolation)
    key = ('table', id(table), table._version, tuple(shape), interpolation)
    return pe.cached(key, lambda: resample_table(table, shape, interpolation))


class LearnedTable(nn.Module):
    """A learned channels-last table ``weight`` (1, *grid, D) used at any grid by resampling (bicubic,
    antialias: timm ``resample_abs_pos_embed``), with optional rows ``prefix`` (1, p, D) for prefix tokens.
    Schemes hold one as ``table``; ``PositionalEncoding.resize_state_dict`` resizes it on load."""

    def __init__(self, grid_size, dim: int, num_prefix: int = 0, interpolation: str = 'bicubic'):
        super().__init__()
        check_choice('ape', 'interpolation', interpolation, INTERPOLATIONS)
        self.interpolation = interpolation
        self.weight = nn.Parameter(torch.zeros(1, *grid_size, dim))
        self.prefix = nn.Parameter(torch.zeros(1, num_prefix, dim)) if num_prefix else None
        trunc_normal_(self.weight, std=.02)
        if self.prefix is not None:
            trunc_normal_(self.prefix, std=.02)

    def at(self, pe: PositionalEncoding, shape) -> torch.Tensor:
        """(1, prod(shape), D): the table at ``shape``."""
        return cached_resample(pe, self.weight, shape, self.interpolation).flatten(1, -2)

    def add(self, pe: PositionalEncoding, x: torch.Tensor, grid) -> torch.Tensor:
        return add_to_patches(x, self.at(pe, grid.shape), grid.num_prefix, self.prefix)

    def resize_state_dict(self, state_dict, prefix: str, grid_size) -> None:
        key = prefix + 'weight'
        if key in state_dict and tuple(state_dict[key].shape[1:-1]) != tuple(grid_size):
            state_dict[key] = resample_table(state_dict[key], grid_size, self.interpolation)


@register_pos_encoding
class AbsolutePE(PositionalEncoding):
    """Learned absolute position embedding (ViT, DeiT): x <- x + P, P a table at the reference grid,
    resampled (bicubic, antialias, as timm ``resample_abs_pos_embed``) at any other grid.

    Options:
        embed_prefix: the prefix tokens (cls, registers) get their own learned rows (timm ViT),
            or none (timm ``no_embed_class``).
        interpolation: how the table is resampled at another grid (bicubic, bilinear, nearest, area).
    """
    name = 'ape'

    def __init__(self, *, embed_prefix: bool = True, interpolation: str = 'bicubic', **common):
        super().__init__(**common)
        self.table = LearnedTable(self.grid_size, self.dim, self.num_prefix_tokens if embed_prefix else 0,
                                  interpolation)

    def tokens(self, x, ctx: PosContext):
        return self.table.add(self, x, ctx.grid)


@register_pos_encoding
class SinCosPE(PositionalEncoding):
    """Fixed MAE-style sin-cos embedding: the width is split over the axes, each part
    [sin(p w_k), cos(p w_k)] with w_k = 1/temperature^(k/(D/2r)). Recomputed for every grid.

    Options: temperature (10000).
    """
    name = 'sincos'
    strategies = ('pi',)

    def __init__(self, *, temperature: float = 10000., **common):
        super().__init__(**common)
        check_positive(self.name, 'temperature', temperature)
        self.temperature = temperature
        sincos_embed(self.grid_size, self.dim)  # validates dim against the rank

    def prepare(self, grid):
        scale = grid_scale(self, grid)
        pos = self.cached(('sincos', grid.shape, scale), lambda: sincos_embed(
            grid.shape, self.dim, self.temperature, device=self.scheme.device, scale=scale)[None])
        return {'pos': pos}

    def tokens(self, x, ctx):
        return add_to_patches(x, ctx.state['pos'], ctx.grid.num_prefix)


def grid_scale(pe: PositionalEncoding, grid) -> Optional[tuple]:
    """Per-axis coordinate scale of the position-interpolation strategy, or None (as trained)."""
    if pe.resolution_strategy == 'pi':
        return tuple(r / s for r, s in zip(pe.grid_size, grid.shape))
    return None


@register_pos_encoding
class AbsWinPE(PositionalEncoding):
    """Window-absolute embedding (Bolya et al. 2024, "Window Attention is Bugged"; timm hiera
    ``abs_win_pos_embed``): P = interp(G -> grid) + tile(W_win). Only the global table G is
    interpolated; the window table keeps its size and is tiled (cropped where the grid is not a
    multiple of the window), so it stays aligned with a fixed window size.

    Options:
        window_size: size of the tiled window table (default 7 per axis, capped at the grid).
        global_size: size of the global table (default: the reference grid).
    """
    name = 'abswin'

    def __init__(self, *, window_size: Optional[Sequence[int]] = None, global_size: Optional[Sequence[int]] = None,
                 **common):
        super().__init__(**common)
        window_size = self._size_option('window_size', window_size, tuple(min(7, s) for s in self.grid_size))
        global_size = self._size_option('global_size', global_size, self.grid_size)
        self.interpolation = 'bicubic'
        self.pos_embed = nn.Parameter(torch.zeros(1, *global_size, self.dim))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, *window_size, self.dim))
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.pos_embed_window, std=.02)

    def _size_option(self, option, value, default):
        if value is None:
            return tuple(default)
        value = (value,) * self.rank if isinstance(value, int) else tuple(value)
        if len(value) != self.rank or any((not isinstance(v, int)) or v <= 0 for v in value):
            raise ValueError(f"abswin: invalid {option}={value!r}; expected {self.rank} positive integers")
        return value

    def embedding(self, shape) -> torch.Tensor:
        """(1, prod(shape), D): global part resampled plus window part tiled."""
        win = self.pos_embed_window
        reps = [math.ceil(s / w) for s, w in zip(shape, win.shape[1:-1])]
        tiled = win.repeat(1, *reps, 1)[(slice(None),) + tuple(slice(0, s) for s in shape)]
        return (cached_resample(self, self.pos_embed, shape, self.interpolation) + tiled).flatten(1, -2)

    def tokens(self, x, ctx):
        return add_to_patches(x, self.embedding(ctx.grid.shape), ctx.grid.num_prefix)

    def resize_state_dict(self, state_dict, prefix):
        key = prefix + 'pos_embed'
        size = tuple(self.pos_embed.shape[1:-1])
        if key in state_dict and tuple(state_dict[key].shape[1:-1]) != size:
            state_dict[key] = resample_table(state_dict[key], size, 'bicubic')


@register_pos_encoding
class FourierPE(PositionalEncoding):
    """Learnable Fourier features (Li et al., NeurIPS 2021, Eq. 2): for coordinates x (rank M),
    r = 1/sqrt(F) [cos(x W^T) || sin(x W^T)], W in R^{F/2 x M} ~ N(0, gamma^-2), PE = MLP(r) with GELU.
    With ``groups`` G, G independent feature sets each produce D/G channels (concatenated).

    Coordinates are patch indices divided by the training grid (``coord_unit``: the training grid spans
    [0, 1)), so a larger grid extends the coordinates instead of squeezing them.

    Options: num_features F (64), hidden_dim (32), gamma (1.0), groups (1).
    """
    name = 'fourier'
    strategies = ('pi',)

    def __init__(self, *, num_features: int = 64, hidden_dim: int = 32, gamma: float = 1.0, groups: int = 1,
                 **common):
        super().__init__(**common)
        for opt, v in (('num_features', num_features), ('hidden_dim', hidden_dim), ('groups', groups)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"fourier: invalid {opt}={v!r}; expected a positive integer")
        check_positive(self.name, 'gamma', gamma)
        if num_features % 2:
            raise ValueError(f"fourier: invalid num_features={num_features}; expected an even number")
        if self.dim % groups:
            raise ValueError(f"fourier: invalid groups={groups}; dim={self.dim} must be divisible by it")
        self.num_features, self.groups, self.gamma = num_features, groups, gamma
        self.freqs = nn.Parameter(torch.randn(groups, num_features // 2, self.rank) / gamma)
        # coordinates are patch indices over this grid (the training grid): a persistent buffer, so a
        # checkpoint loaded at another resolution or ``set_input_size`` keeps the positions it learned
        self.register_buffer('coord_unit', torch.tensor(self.grid_size, dtype=torch.float32))
        self.mlp = nn.Sequential(
            nn.Conv1d(groups * num_features, groups * hidden_dim, 1, groups=groups), nn.GELU(),
            nn.Conv1d(groups * hidden_dim, self.dim, 1, groups=groups))

    def features(self, coords: torch.Tensor) -> torch.Tensor:
        """Eq. 2 for (N, M) coordinates: (1, N, D)."""
        proj = torch.einsum('nm,gfm->gfn', coords, self.freqs)  # (G, F/2, N)
        r = torch.cat([proj.cos(), proj.sin()], dim=1) / math.sqrt(self.num_features)  # (G, F, N)
        return self.mlp(r.reshape(1, -1, coords.shape[0])).transpose(1, 2)

    def prepare(self, grid):
        unit = tuple(self.coord_unit.tolist())  # the training grid, carried by checkpoints
        if self.resolution_strategy == 'pi':  # position interpolation: the test grid spans [0, 1) too
            scale = tuple(1. / g for g in grid.shape)
        else:
            scale = tuple(1. / u for u in unit)
        coords = self.cached(('coords', grid.shape, scale),
                             lambda: coord_grid(grid.shape, device=self.freqs.device, scale=scale))
        return {'coords': coords}

    def tokens(self, x, ctx):
        return add_to_patches(x, self.features(ctx.state['coords']), ctx.grid.num_prefix)
