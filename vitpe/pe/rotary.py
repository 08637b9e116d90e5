"""Rotary position embeddings for vision, shared by ``rope_axial`` and ``rope_mixed`` (Heo et al., "Rotary
Position Embedding for Vision Transformer", ECCV 2024; naver-ai/rope-vit, timm eva ``vit_*_patch16_rope*``).

Queries and keys of patch tokens are rotated pairwise by angles that depend on the token's coordinates;
prefix tokens are left alone. Angles are recomputed for every grid, so any size works.

Training-free resolution strategies (``ctx.strategy.positions``): 'pi' scales the coordinates by
reference/test grid (position interpolation, Chen et al. 2023); 'ntk' raises the frequency base theta by
s^(d/(d-2)) (NTK-aware scaling); 'yarn' interpolates only the frequencies that turn less than once over the
reference grid, with a ramp, and adds its attention temperature (YaRN, Peng et al. 2023).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import PEState, PositionalEncoding
from .common import LearnedTable, check_bool, check_positive, check_random_positions
from .converters import from_timm_eva
from .strategy import NO_STRATEGY, ResolutionStrategy


def rope_axial_freqs(head_dim: int, rank: int, theta: float) -> torch.Tensor:
    """Frequencies of axial RoPE: 1 / theta^(k / n), k < n with n = head_dim / (2 * rank) per axis
    (RoPE-ViT Eq. 10; timm ``freq_bands(head_dim // 4, temperature=theta, step=1)`` for 2D)."""
    n = head_dim // (2 * rank)
    if n * 2 * rank != head_dim:
        raise ValueError(f"rope_axial: head_dim={head_dim} must be divisible by {2 * rank} for a rank-{rank} grid")
    return 1. / theta ** (torch.arange(n, dtype=torch.float32) / n)


def rope_axial_angles(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(N, head_dim/2) angles of coords (N, rank) (or (B, N, rank): (B, N, head_dim/2)). Channel pairs are grouped
    by axis, last axis first, so for 2D the first half of the pairs rotates with the column c, the second with
    the row r (timm 'xy')."""
    rank = coords.shape[-1]
    return torch.cat([coords[..., a:a + 1] * freqs for a in reversed(range(rank))], dim=-1)


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
    """Angles c*f_x + r*f_y (+ t*f_t): coords (N, rank) in ``coord_grid`` order (or (B, 1, N, rank): per sample),
    freqs (rank, ..., P) with axis 0 = x (last coordinate). Returns (..., N, P), computed in float32."""
    rank = coords.shape[-1]
    ang = 0
    for i in range(rank):
        ang = ang + coords[..., rank - 1 - i, None].float() * freqs[i].float().unsqueeze(-2)
    return ang


def rotate_pairs(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (x0, x1), (x2, x3), ... by per-pair unit complex numbers
    ``rot`` (..., P) = exp(i angle): (x0 + i x1) * rot, one complex product in float32, returned in x's dtype."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


class DrawnRotation(PEState):
    """The rotation state of a forward with randomised positions (training): the positions are drawn per sample
    (``common.GridPositions``) and the rotation made from them on first use, then kept for the forward."""

    def __init__(self, positions, freqs: torch.Tensor, num_prefix: int):
        self.positions, self.freqs, self.num_prefix = positions, freqs, num_prefix
        self._made = {}

    def made(self, batch: int, build):
        """``build(coords (B, N, rank))`` for this batch, once per forward."""
        if batch not in self._made:
            self._made[batch] = build(self.positions.coords(batch))
        return self._made[batch]


class RotaryPE(PositionalEncoding):
    """Shared by the RoPE schemes: the optional APE (RoPE + APE variants), the rotation of patch tokens,
    the strategies."""
    hooks = frozenset({'tokens', 'qk'})
    position_strategies = ('pi', 'ntk', 'yarn')
    convert_checkpoint = staticmethod(from_timm_eva)

    def __init__(self, *, theta: float, ape: bool, antialias: bool = True, random_positions: float = 0., **common):
        super().__init__(**common)
        check_positive(self.name, 'theta', theta)
        check_bool(self.name, 'ape', ape)
        check_random_positions(self.name, random_positions)
        self.theta, self.random_positions = float(theta), float(random_positions)
        # RoPE + APE (RoPE-ViT): a learned table on patch tokens only, as timm's ``no_embed_class``; antialias
        # as timm's port, whose checkpoints load with parity (RoPE-ViT's own code resizes without it)
        self.table = LearnedTable(self.grid_size, self.dim, antialias=antialias, scheme=self.name) if ape else None
        if not ape:
            self.hooks = self.hooks - {'tokens'}

    def tokens(self, x, ctx):
        return self.table.add(self, x, ctx.grid, ctx.strategy)

    @staticmethod
    def with_prefix(ang: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """exp(i angle) for the angles (..., N, P) with ``num_prefix`` leading rows of angle 0 (the prefix
        tokens are not rotated): one rotation over the whole sequence, no split and concat per layer."""
        if num_prefix:
            ang = F.pad(ang, (0, 0, num_prefix, 0))  # num_prefix rows of zeros before the patch rows
        return torch.polar(torch.ones_like(ang), ang)

    def extension(self, grid) -> float:
        """How much larger than the reference grid the test grid is (largest axis ratio, at least 1)."""
        return max([1.0] + [g / r for g, r in zip(grid.shape, self.grid_size)])

    def scale_freqs(self, freqs: torch.Tensor, grid, strategy: ResolutionStrategy = NO_STRATEGY) -> torch.Tensor:
        """Apply the NTK or YaRN strategy to frequencies (any shape) for a grid ``s`` times the reference.

        NTK-aware: theta' = theta * s^(d/(d-2)) (d channels per axis), i.e. a frequency theta^-e is
        multiplied by s^(-e d/(d-2)), with e = -log|f| / log(theta) (e = k/n for the axial ladder).
        YaRN: r = rotations a frequency makes over the reference grid; frequencies with r < 1 are
        interpolated (divided by s), those with r > 4 kept, a linear ramp in between (Peng et al. 2023,
        Eq. 17-18, with ramp bounds for grids of tens of tokens instead of thousands)."""
        if strategy.positions not in ('ntk', 'yarn'):
            return freqs
        s = self.extension(grid)
        if s <= 1.0:
            return freqs
        mag = freqs.abs().float().clamp(min=1e-12)
        if strategy.positions == 'ntk':
            d = 2 * (self.head_dim // (2 * self.rank))
            e = (-mag.log() / math.log(self.theta)).clamp(0, 1)
            return freqs * s ** (-e * d / max(d - 2, 1))
        rotations = max(self.grid_size) * mag / (2 * math.pi)
        keep = ((rotations - 1.0) / (4.0 - 1.0)).clamp(0, 1)
        return freqs * (keep + (1 - keep) / s)

    def logit_temperature(self, grid, strategy: ResolutionStrategy) -> float:
        """YaRN's attention temperature: logits times (0.1 ln s + 1)^2."""
        if strategy.positions != 'yarn':
            return 1.0
        s = self.extension(grid)
        return (0.1 * math.log(s) + 1) ** 2 if s > 1 else 1.0
