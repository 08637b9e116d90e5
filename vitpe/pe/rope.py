"""Rotary position embeddings for vision (Heo et al., "Rotary Position Embedding for Vision
Transformer", ECCV 2024; naver-ai/rope-vit, timm eva ``vit_*_patch16_rope*``).

Queries and keys of patch tokens are rotated pairwise by angles that depend on the token's
coordinates; prefix tokens are left alone. Angles are recomputed for every grid, so any size works.

Training-free resolution strategies (``resolution_strategy``, set by ``vitpe.eval.apply_strategy``):
'pi' scales the coordinates by reference/test grid (position interpolation, Chen et al. 2023); 'ntk'
raises the frequency base theta by s^(d/(d-2)) (NTK-aware scaling); 'yarn' interpolates only the
frequencies that turn less than once over the reference grid, with a ramp (YaRN, Peng et al. 2023).
"""
from __future__ import annotations

import math
import torch
from torch import nn

from .absolute import LearnedTable, grid_scale
from .base import PosContext, PositionalEncoding, check_positive, register_pos_encoding
from .functional import (coord_grid, rope_axial_angles, rope_axial_freqs, rope_mixed_angles, rope_mixed_init,
                         rotate_pairs)


class _RoPEBase(PositionalEncoding):
    """Shared: the optional APE (RoPE + APE variants), the rotation of patch tokens, the strategies."""
    strategies = ('pi', 'ntk', 'yarn')

    def __init__(self, *, theta: float, ape: bool, **common):
        super().__init__(**common)
        check_positive(self.name, 'theta', theta)
        if not isinstance(ape, bool):
            raise ValueError(f"{self.name}: invalid ape={ape!r}; expected True or False")
        self.theta = float(theta)
        # RoPE + APE (RoPE-ViT): a learned table on patch tokens only, as timm's ``no_embed_class``
        self.table = LearnedTable(self.grid_size, self.dim) if ape else None
        if not ape:
            self._hooks_used = self._hooks_used - {'tokens'}

    def coords(self, grid) -> torch.Tensor:
        scale = grid_scale(self, grid)
        return self.cached(('coords', grid.shape, scale),
                           lambda: coord_grid(grid.shape, device=self.scheme.device, scale=scale))

    def tokens(self, x, ctx):
        return x if self.table is None else self.table.add(self, x, ctx.grid)

    @staticmethod
    def with_prefix(ang: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """exp(i angle) for the angles (..., N, P) with ``num_prefix`` leading rows of angle 0 (the prefix
        tokens are not rotated): one rotation over the whole sequence, no split and concat per layer."""
        if num_prefix:
            ang = torch.cat([ang.new_zeros(*ang.shape[:-2], num_prefix, ang.shape[-1]), ang], dim=-2)
        return torch.polar(torch.ones_like(ang), ang)

    def extension(self, grid) -> float:
        """How much larger than the reference grid the test grid is (largest axis ratio, at least 1)."""
        return max([1.0] + [g / r for g, r in zip(grid.shape, self.grid_size)])

    def scale_freqs(self, freqs: torch.Tensor, grid) -> torch.Tensor:
        """Apply the NTK or YaRN strategy to frequencies (any shape) for a grid ``s`` times the reference.

        NTK-aware: theta' = theta * s^(d/(d-2)) (d channels per axis), i.e. a frequency theta^-e is
        multiplied by s^(-e d/(d-2)), with e = -log|f| / log(theta) (e = k/n for the axial ladder).
        YaRN: r = rotations a frequency makes over the reference grid; frequencies with r < 1 are
        interpolated (divided by s), those with r > 4 kept, a linear ramp in between (Peng et al. 2023,
        Eq. 17-18, with ramp bounds for grids of tens of tokens instead of thousands)."""
        s = self.extension(grid)
        if s <= 1.0 or self.resolution_strategy not in ('ntk', 'yarn'):
            return freqs
        mag = freqs.abs().float().clamp(min=1e-12)
        if self.resolution_strategy == 'ntk':
            d = 2 * (self.head_dim // (2 * self.rank))
            e = (-mag.log() / math.log(self.theta)).clamp(0, 1)
            return freqs * s ** (-e * d / max(d - 2, 1))
        rotations = max(self.grid_size) * mag / (2 * math.pi)
        keep = ((rotations - 1.0) / (4.0 - 1.0)).clamp(0, 1)
        return freqs * (keep + (1 - keep) / s)

    def state_logit_scale(self, grid) -> float:
        """YaRN's attention temperature: logits times (0.1 ln s + 1)^2."""
        s = self.extension(grid)
        return (0.1 * math.log(s) + 1) ** 2 if self.resolution_strategy == 'yarn' and s > 1 else 1.0


@register_pos_encoding
class RoPEAxial(_RoPEBase):
    """Axial RoPE (RoPE-ViT Eq. 10): frequencies theta_k = 1/theta^(k/n), n = head_dim/(2 rank) per axis;
    one group of channel pairs rotates by c*theta_k, the next by r*theta_k (and t*theta_k in 3D).

    Options: theta (100, the paper's base), ape (also add a learned APE, RoPE-ViT's ``rope_ape``).
    """
    name = 'rope_axial'

    def __init__(self, *, theta: float = 100., ape: bool = False, **common):
        super().__init__(theta=theta, ape=ape, **common)
        self.register_buffer('freqs', rope_axial_freqs(self.head_dim, self.rank, self.theta), persistent=False)

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        if self.freqs.dtype != torch.float32:  # keep the frequencies in float32 under .half() / .bfloat16()
            self.freqs = rope_axial_freqs(self.head_dim, self.rank, self.theta).to(self.freqs.device)
        return module

    def prepare(self, grid):
        self.check_grid(grid)
        key = ('rotation', grid.shape, self.resolution_strategy)

        def build():
            return self.with_prefix(rope_axial_angles(self.coords(grid), self.scale_freqs(self.freqs, grid)),
                                    grid.num_prefix)
        return {'rot': self.cached(key + (grid.num_prefix,), build), 'logit_scale': self.state_logit_scale(grid)}

    def qk(self, q, k, ctx: PosContext, layer: int):
        rot = ctx.state['rot']
        return rotate_pairs(q, rot), rotate_pairs(k, rot)


@register_pos_encoding
class RoPEMixed(_RoPEBase):
    """Mixed RoPE (RoPE-ViT Eq. 11-12): learned frequencies per layer and head; the angle of a channel
    pair is c*f_x + r*f_y (+ t*f_t). ``freqs`` has shape (rank, depth, heads, head_dim/2), initialised
    with magnitudes 1/theta^(4k/d) along random orthogonal directions.

    Options: theta (10, the paper's base), ape (also add a learned APE), per_layer (frequencies per
    layer, True; False shares one set over all layers).
    """
    name = 'rope_mixed'

    def __init__(self, *, theta: float = 10., ape: bool = False, per_layer: bool = True, **common):
        super().__init__(theta=theta, ape=ape, **common)
        self.per_layer = per_layer
        freqs = rope_mixed_init(self.head_dim, self.depth if per_layer else 1, self.num_heads, self.rank, self.theta)
        self.freqs = nn.Parameter(freqs)

    def no_weight_decay(self):
        return {'freqs'}

    def prepare(self, grid):
        self.check_grid(grid)
        # the rotation of each layer is built in ``qk`` when the layer runs, so inference holds one
        # layer's (heads, N, P) rotation at a time instead of all depth x heads x N x P at once
        return {'coords': self.coords(grid), 'freqs': self.scale_freqs(self.freqs, grid),
                'num_prefix': grid.num_prefix, 'logit_scale': self.state_logit_scale(grid)}

    def qk(self, q, k, ctx, layer):
        state = ctx.state
        ang = rope_mixed_angles(state['coords'], state['freqs'][:, layer if self.per_layer else 0])  # (heads, N, P)
        rot = self.with_prefix(ang, state['num_prefix'])
        return rotate_pairs(q, rot), rotate_pairs(k, rot)
