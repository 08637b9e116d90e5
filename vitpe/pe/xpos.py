"""xPos on a grid (Sun et al., "A Length-Extrapolatable Transformer", ACL 2023; microsoft/torchscale ``XPOS``):
axial RoPE (``rotary.py``, RoPE-ViT Eq. 10) whose rotated query and key pairs are also scaled,

    q_n -> R(n) q_n * zeta^(n / B),   k_m -> R(m) k_m * zeta^(-m / B),   so   q_n . k_m  gets  zeta^((n - m) / B),

per channel pair k of an axis with n pairs: zeta_k = (k / n + gamma) / (1 + gamma) (the fastest-turning pair
decays most), gamma = 0.4, B = ``scale_base`` = 512 (the paper's), positions centred on the grid as torchscale
does (so the scales stay near 1).

Adaptation to bidirectional attention: in causal attention n - m >= 0, so zeta^((n - m) / B) is a decay with
distance. Over a grid the key may lie on either side, and a decay zeta^(|n - m| / B) does not factor into a
query part and a key part. So each head keeps the exact xPos factorisation with a direction per axis: head h
uses s_{h,a} (n_a - m_a) on axis a, s_{h,a} = -1 where bit a of (h mod 2^rank) is set (the axes in coord_grid
order, the last is the column), so heads decay towards keys before the query (s = +1: up / left) or after it
(s = -1) on each axis, and grow mildly on the other side (by at most zeta_0^(-D / B): 1.03 over a 14-patch
axis, 1.17 over 64 patches, at the defaults). On a 1 x N grid a head with s = +1 is the paper's 1D xPos.

3D (T, H, W): the channel pairs are split over t, h, w as rope_axial's (``split``), and each head's decay
directions run over three axes (bits t, h, w of h mod 8). It does not reduce to the 2D form at T = 1: h and w
get fewer channels than in 2D and a head's h, w directions come from other bits than in the 2D model. What holds
(tested): at T = 1 the t pairs neither rotate nor scale (t = 0 and zeta^0 = 1).

Position strategies as the RoPE schemes ('pi', 'ntk', 'yarn'); randomised positions in training
(``random_positions``) as every scheme with coordinates. Default theta 100 (RoPE-ViT's base for 2D axial RoPE;
the paper's 1D base is 10000).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .common import GridPositions, axial_ladder, check_positive
from .registry import register_pos_encoding
from .rotary import DrawnRotation, RotaryPE, rotate_pairs
from .strategy import NO_STRATEGY


def xpos_zeta(split, gamma: float) -> torch.Tensor:
    """zeta per channel pair, (P,), laid out as ``axial_ladder(split)``: zeta_k = (k / n_a + gamma) / (1 + gamma)
    for the k-th of the n_a pairs of axis a."""
    return torch.cat([(torch.arange(n, dtype=torch.float32) / n + gamma) / (1 + gamma) for n in reversed(split)])


def xpos_signs(num_heads: int, split) -> torch.Tensor:
    """(heads, P) decay direction s_{h,a} of each head and channel pair (laid out as ``axial_ladder(split)``): -1
    where bit a (the pair's grid axis) of h mod 2^rank is set."""
    rank = len(split)
    axes = [a for a in reversed(range(rank)) for _ in range(split[a])]
    return torch.tensor([[-1. if (h % 2 ** rank) >> a & 1 else 1. for a in axes] for h in range(num_heads)])


class XPosState(DrawnRotation):
    """Positions (the grid's, or drawn per sample), frequencies after the strategy, and log_decay (heads,
    head_dim / 2) = s_{h,a} log(zeta_k) / B; (rot_q, rot_k) made once per forward."""

    def __init__(self, positions: GridPositions, freqs: torch.Tensor, pair_axis: torch.Tensor, log_decay: torch.Tensor,
                 num_prefix: int):
        super().__init__(positions, freqs, num_prefix)
        self.pair_axis, self.log_decay = pair_axis, log_decay


@register_pos_encoding
class XPos(RotaryPE):
    """Options: theta (100), gamma (0.4), scale_base (512), ape (also add a learned APE), antialias (of its
    resampling), split (channel pairs per axis in grid order, as rope_axial; None: even, or in 3D when head_dim/2
    is not a multiple of 3 the rest to t), random_positions (0: off, or the factor of the range positions are
    drawn from in training)."""
    name = 'xpos'

    def __init__(self, *, theta: float = 100., gamma: float = 0.4, scale_base: float = 512., ape: bool = False,
                 antialias: bool = True, split: Optional[Sequence[int]] = None, random_positions: float = 0.,
                 **common):
        super().__init__(theta=theta, ape=ape, antialias=antialias, split=split, random_positions=random_positions,
                         **common)
        check_positive(self.name, 'gamma', gamma)
        check_positive(self.name, 'scale_base', scale_base)
        self.gamma, self.scale_base = float(gamma), float(scale_base)

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        freqs, axis = axial_ladder(self.split, self.theta)
        log_decay = xpos_signs(self.num_heads, self.split) * xpos_zeta(self.split, self.gamma).log() / self.scale_base
        freqs, axis = freqs.to(device), axis.to(device)
        return XPosState(GridPositions(self, grid.shape, strategy, device),
                         self.scale_freqs(freqs, grid, strategy, axis), axis, log_decay.to(device), grid.num_prefix)

    @staticmethod
    def rotations(state: XPosState, coords: torch.Tensor):
        """(rot_q, rot_k), each (1 | B, heads, p + N, head_dim / 2) complex: rotation times xPos scale, for
        coords (1 | B, N, rank)."""
        pos, rank = state.positions, coords.shape[-1]
        angles = coords[..., state.pair_axis] * state.freqs  # (b, N, P): the pair's coordinate x its frequency
        centre = torch.tensor([(e - 1) / 2 * s for e, s in zip(pos.extents, pos.scale or (1.,) * rank)],
                              device=coords.device)
        centred = (coords - centre)[..., state.pair_axis]  # each pair's centred coordinate
        log_scale = centred[:, None] * state.log_decay[:, None]  # (b, heads, N, P)
        pad = (0, 0, state.num_prefix, 0)  # prefix tokens: angle 0, scale 1
        angles, log_scale = F.pad(angles, pad)[:, None], F.pad(log_scale, pad)
        return torch.polar(log_scale.exp(), angles), torch.polar((-log_scale).exp(), angles)

    def qk(self, q, k, ctx, layer):
        state = ctx.state
        rot = state.made(q.shape[0] if state.positions.factor else 1, lambda coords: self.rotations(state, coords))
        return rotate_pairs(q, rot[0]), rotate_pairs(k, rot[1])
