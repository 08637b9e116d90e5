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
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .base import PEState, PositionalEncoding
from .common import LearnedTable, axial_ladder, axis_split, check_bool, check_positive, check_random_positions
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


def rope_mixed_init(head_dim: int, depth: int, num_heads: int, rank: int, theta: float,
                    split: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Learnable frequencies of mixed RoPE, (rank, depth, num_heads, head_dim/2), axis order as ``coord_grid``
    reversed (x first). Each (layer, head) gets a random orthonormal set of ``rank`` directions, one per
    contiguous chunk of channel pairs (RoPE-ViT ``init_random_2d_freqs``: for 2D the directions are phi and
    phi + pi/2); within a chunk of n pairs the magnitudes are 1/theta^(k/n) (1/theta^(4k/d) in 2D). The chunk
    sizes are ``axis_split`` (``split`` in grid order; chunks laid out last axis first)."""
    chunks = axis_split(head_dim // 2, rank, split, f"rope_mixed: head_dim={head_dim}")
    if len(set(chunks)) > 1:  # uneven chunks: the same directions, each chunk its own magnitude ladder
        return _rope_mixed_init_uneven(chunks, depth, num_heads, theta)
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


def _rope_mixed_init_uneven(chunks: Sequence[int], depth: int, num_heads: int, theta: float) -> torch.Tensor:
    rank = len(chunks)
    dirs = torch.linalg.qr(torch.randn(depth, num_heads, rank, rank))[0].transpose(-1, -2)  # (l, h, chunk, axis)
    mag, chunk_id = axial_ladder(chunks, theta)  # chunk_id: the grid axis of each chunk (laid out last first)
    order = (rank - 1 - chunk_id)  # chunk index in layout order, as the even init's
    return (dirs[:, :, order, :].permute(3, 0, 1, 2) * mag).contiguous()


def rope_mixed_angles(coords: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Angles c*f_x + r*f_y (+ t*f_t): coords (N, rank) in ``coord_grid`` order (or (B, 1, N, rank): per sample),
    freqs (rank, ..., P) with axis 0 = x (last coordinate). Returns (..., N, P), computed in float32."""
    rank = coords.shape[-1]
    ang = 0
    for i in range(rank):
        ang = ang + coords[..., rank - 1 - i, None].float() * freqs[i].float().unsqueeze(-2)
    return ang


def ntk_scaled(freqs: torch.Tensor, s: float, d, theta: float) -> torch.Tensor:
    """NTK-aware scaling for an extension ``s``: theta' = theta * s^(d/(d-2)) (d channels per axis: a number, or a
    tensor that broadcasts with ``freqs``, the channels of each frequency's axis), i.e. a frequency theta^-e is
    multiplied by s^(-e d/(d-2)), with e = -log|f| / log(theta) (e = k/n for the ladder)."""
    e = (-freqs.abs().float().clamp(min=1e-12).log() / math.log(theta)).clamp(0, 1)
    if isinstance(d, (int, float)):
        ratio = d / max(d - 2, 1)
    else:  # a tensor (method calls only, so FX and export trace it)
        d = d.float()
        ratio = d / (d - 2).clamp(min=1)
    return freqs * s ** (-e * ratio)


def riflex_index(freqs: torch.Tensor, train_len: int) -> torch.Tensor:
    """RIFLEx's intrinsic frequency along the last dim of ``freqs``: the one whose period 2 pi / |f| is closest to
    the training length (RIFLEx picks the period closest to the repetition it observes; the training length,
    where a clip first meets its own period, is our proxy). Returns (...,) indices."""
    period = 2 * math.pi / freqs.abs().float().clamp(min=1e-12)
    return (period - train_len).abs().argmin(-1)


def riflex_scaled(freqs: torch.Tensor, train_len: int, test_len: int, margin: float = 0.9) -> torch.Tensor:
    """RIFLEx (Zhao et al. 2025, Eq. 8 with the reference code's 0.9): the intrinsic frequency (``riflex_index``)
    lowered to margin * 2 pi / test_len when higher, so that the test length stays within one period; the other
    frequencies are kept."""
    k = riflex_index(freqs, train_len).unsqueeze(-1)
    f_k = freqs.gather(-1, k)
    lowered = f_k.sign() * torch.minimum(f_k.abs(), f_k.new_tensor(margin * 2 * math.pi / test_len))
    return freqs.scatter(-1, k, lowered)


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
    temporal_strategies = ('pi_t', 'ntk_t', 'riflex')
    convert_checkpoint = staticmethod(from_timm_eva)

    def __init__(self, *, theta: float, ape: bool, antialias: bool = True, split: Optional[Sequence[int]] = None,
                 random_positions: float = 0., **common):
        super().__init__(**common)
        check_positive(self.name, 'theta', theta)
        check_bool(self.name, 'ape', ape)
        check_random_positions(self.name, random_positions)
        self.theta, self.random_positions = float(theta), float(random_positions)
        self.split = axis_split(self.head_dim // 2, self.rank, split, f"{self.name}: head_dim={self.head_dim}")
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

    def extension(self, grid, axes: Optional[Sequence[int]] = None) -> float:
        """How much larger than the reference grid the test grid is (largest ratio over ``axes``, default all;
        at least 1)."""
        axes = range(self.rank) if axes is None else axes
        return max([1.0] + [grid.shape[a] / self.grid_size[a] for a in axes])

    def scale_freqs(self, freqs: torch.Tensor, grid, strategy: ResolutionStrategy = NO_STRATEGY,
                    axis: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Apply the strategy's NTK, YaRN, NTK-t or RIFLEx to frequencies: rope_axial's (P,) with ``axis`` the grid
        axis of each, or (axis None) rope_mixed's (rank, ...) whose row i is the component along grid axis
        rank - 1 - i (row rank - 1 = f_t in 3D).

        With a temporal strategy ('ntk_t', 'riflex', 'pi_t') on a (T, H, W) grid, the position strategy acts on
        the spatial frequencies only, with s over h and w; the temporal one on the temporal frequencies (for
        rope_mixed, whose learned directions mix the axes, the t components f_t: the t * f_t term of each angle),
        with s = T_test / T_ref: 'ntk_t' is ``ntk_scaled`` with d = 2 n_t, 'riflex' is ``riflex_scaled``
        ('pi_t' scales the t coordinate instead, in ``grid_coords``)."""
        temporal = strategy.temporal if self.rank == 3 else 'none'
        if strategy.positions not in ('ntk', 'yarn') and temporal not in ('ntk_t', 'riflex'):
            return freqs  # (untouched: under FX tracing ``freqs`` is a proxy)
        if axis is None:  # rope_mixed's (rank, depth | 1, heads, P)
            axis = (self.rank - 1 - torch.arange(self.rank, device=self.default_device())).view(-1, 1, 1, 1)
        is_t = axis == 0
        out = freqs
        if strategy.positions in ('ntk', 'yarn'):
            axes = self.position_axes(strategy)
            out = self._scaled_positions(freqs, self.extension(grid, axes), strategy.positions, axis, axes)
            out = torch.where(is_t, freqs, out) if temporal != 'none' else out
        s_t = grid.shape[0] / self.grid_size[0] if temporal != 'none' else 1.0
        if temporal == 'ntk_t' and s_t > 1:
            out = torch.where(is_t, ntk_scaled(out, s_t, 2 * self.split[0], self.theta), out)
        if temporal == 'riflex' and s_t > 1:
            f_t = out[is_t] if axis.ndim == 1 else out[-1]  # the temporal frequencies
            lowered = riflex_scaled(f_t, self.grid_size[0], grid.shape[0])
            out = out.masked_scatter(is_t, lowered) if axis.ndim == 1 else torch.cat([out[:-1], lowered[None]])
        return out

    def position_axes(self, strategy: ResolutionStrategy) -> Sequence[int]:
        """The grid axes the position strategy acts on: all, or with a temporal strategy on a (T, H, W) grid
        h and w only."""
        return range(1, self.rank) if self.rank == 3 and strategy.temporal != 'none' else range(self.rank)

    def _scaled_positions(self, freqs: torch.Tensor, s: float, kind: str, axis: torch.Tensor,
                          axes: Sequence[int]) -> torch.Tensor:
        """NTK-aware (``ntk_scaled``, d = the channels of each frequency's axis, ``axis``) or YaRN: r = rotations
        a frequency makes over the reference grid (its longest axis among ``axes``); frequencies with r < 1 are
        interpolated (divided by s), those with r > 4 kept, a linear ramp in between (Peng et al. 2023, Eq. 17-18,
        with ramp bounds for grids of tens of tokens instead of thousands)."""
        if s <= 1.0:
            return freqs
        if kind == 'ntk':
            channels = 2 * axis.new_tensor(self.split)[axis]
            return ntk_scaled(freqs, s, channels, self.theta)
        mag = freqs.abs().float().clamp(min=1e-12)
        rotations = max(self.grid_size[a] for a in axes) * mag / (2 * math.pi)
        keep = ((rotations - 1.0) / (4.0 - 1.0)).clamp(0, 1)
        return freqs * (keep + (1 - keep) / s)

    def logit_temperature(self, grid, strategy: ResolutionStrategy) -> float:
        """YaRN's attention temperature: logits times (0.1 ln s + 1)^2."""
        if strategy.positions != 'yarn':
            return 1.0
        s = self.extension(grid, self.position_axes(strategy))  # with a temporal strategy: over h and w
        return (0.1 * math.log(s) + 1) ** 2 if s > 1 else 1.0
