"""Axial RoPE (RoPE-ViT Eq. 10; timm ``RotaryEmbeddingCat``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PEState, PosContext
from .common import GridPositions, grid_coords
from .registry import ZooEntry, register_pos_encoding
from .rotary import DrawnRotation, RotaryPE, rope_axial_angles, rope_axial_freqs, rotate_pairs
from .strategy import NO_STRATEGY


@dataclass
class RotationState(PEState):
    rot: torch.Tensor  # (N, head_dim/2) unit complex numbers, prefix rows 1


@register_pos_encoding
class RoPEAxial(RotaryPE):
    """Frequencies theta_k = 1/theta^(k/n), n = head_dim/(2 rank) per axis; one group of channel pairs
    rotates by c*theta_k, the next by r*theta_k (and t*theta_k in 3D).

    Options: theta (100, the paper's base), ape (also add a learned APE, RoPE-ViT's ``rope_ape``),
    antialias (of that APE's resampling), random_positions (0: off; a factor: randomised positions in training,
    ``common.GridPositions``).
    """
    name = 'rope_axial'
    zoo = (ZooEntry('rope_axial'), ZooEntry('rope_axial_ape', dict(ape=True), ('small', 'base')))

    def __init__(self, *, theta: float = 100., ape: bool = False, antialias: bool = True, random_positions: float = 0.,
                 **common):
        super().__init__(theta=theta, ape=ape, antialias=antialias, random_positions=random_positions, **common)
        self.register_buffer('freqs', rope_axial_freqs(self.head_dim, self.rank, self.theta), persistent=False)

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        if self.freqs.dtype != torch.float32:  # keep the frequencies in float32 under .half() / .bfloat16()
            self.freqs = rope_axial_freqs(self.head_dim, self.rank, self.theta).to(self.freqs.device)
        return module

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        device = device or self.default_device()
        if self.draws_positions:  # per-sample positions: the rotation is made in qk, once per forward
            return DrawnRotation(GridPositions(self, grid.shape, strategy, device),
                                 self.scale_freqs(self.freqs.to(device), grid, strategy), grid.num_prefix)

        def build():
            angles = rope_axial_angles(grid_coords(self, grid.shape, strategy, device),
                                       self.scale_freqs(self.freqs.to(device), grid, strategy))
            return self.with_prefix(angles, grid.num_prefix)
        return RotationState(self.cached(('rotation', grid.shape, grid.num_prefix, strategy.positions, device), build))

    def qk(self, q, k, ctx: PosContext, layer: int):
        state = ctx.state
        rot = state.rot if isinstance(state, RotationState) else state.made(q.shape[0], lambda coords: self.with_prefix(
            rope_axial_angles(coords, state.freqs), state.num_prefix)[:, None])
        return rotate_pairs(q, rot), rotate_pairs(k, rot)
