"""Axial RoPE (RoPE-ViT Eq. 10; timm ``RotaryEmbeddingCat``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .base import PEState, PosContext
from .common import GridPositions, axial_ladder, grid_coords
from .registry import ZooEntry, register_pos_encoding
from .rotary import DrawnRotation, RotaryPE, rotate_pairs
from .strategy import NO_STRATEGY


@dataclass
class RotationState(PEState):
    rot: torch.Tensor  # (N, head_dim/2) unit complex numbers, prefix rows 1


@register_pos_encoding
class RoPEAxial(RotaryPE):
    """Frequencies theta_k = 1/theta^(k/n_a), k < n_a, per axis a (n_a = head_dim/(2 rank) when the rank
    divides head_dim/2); one group of channel pairs rotates by c*theta_k, the next by r*theta_k (and t*theta_k
    in 3D).

    3D (T, H, W): the channel pairs are split over t, h, w (``split``; by default evenly, or when head_dim/2 is
    not a multiple of 3, ceil(head_dim/6) pairs to each of h and w and the rest to t: (t, h, w) = (10, 11, 11)
    of 32). It does not reduce to the 2D form at T = 1: h and w get fewer channels than in 2D. What holds (tested): at
    T = 1 the t pairs do not rotate (angle t * theta_k = 0) and the h, w pairs rotate exactly as 2D RoPE with
    head_dim 2 (n_h + n_w).

    Options: theta (100, the paper's base), ape (also add a learned APE, RoPE-ViT's ``rope_ape``),
    antialias (of that APE's resampling), split (channel pairs per axis in grid order; None: as above),
    random_positions (0: off; a factor: randomised positions in training, ``common.GridPositions``).
    """
    name = 'rope_axial'
    zoo = (ZooEntry('rope_axial'), ZooEntry('rope_axial_ape', dict(ape=True), ('small', 'base')))

    def __init__(self, *, theta: float = 100., ape: bool = False, antialias: bool = True,
                 split: Optional[Sequence[int]] = None, random_positions: float = 0., **common):
        super().__init__(theta=theta, ape=ape, antialias=antialias, split=split, random_positions=random_positions,
                         **common)
        freqs, axis = axial_ladder(self.split, self.theta)
        self.register_buffer('freqs', freqs, persistent=False)  # (P,), the axis of each in ``pair_axis``
        self.register_buffer('pair_axis', axis, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        if self.freqs.dtype != torch.float32:  # keep the frequencies in float32 under .half() / .bfloat16()
            self.freqs = axial_ladder(self.split, self.theta)[0].to(self.freqs.device)
        return module

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        axis = self.pair_axis.to(device)
        if self.draws_positions:  # per-sample positions: the rotation is made in qk, once per forward
            return DrawnRotation(GridPositions(self, grid.shape, strategy, device),
                                 self.scale_freqs(self.freqs.to(device), grid, strategy, axis), grid.num_prefix)

        def build():
            angles = grid_coords(self, grid.shape, strategy, device)[:, axis] * self.scale_freqs(
                self.freqs.to(device), grid, strategy, axis)  # (N, P): coordinate of the pair's axis x frequency
            return self.with_prefix(angles, grid.num_prefix)
        key = ('rotation', grid.shape, grid.num_prefix, strategy.positions, strategy.temporal, device)
        return RotationState(self.cached(key, build))

    def qk(self, q, k, ctx: PosContext, layer: int):
        state = ctx.state
        if isinstance(state, RotationState):
            rot = state.rot
        else:  # drawn coordinates (B, N, rank): the coordinate of each pair's axis times its frequency
            axis = self.pair_axis.to(state.freqs.device)
            rot = state.made(q.shape[0], lambda coords: self.with_prefix(
                coords[..., axis] * state.freqs, state.num_prefix)[:, None])
        return rotate_pairs(q, rot), rotate_pairs(k, rot)
