"""Mixed RoPE with learned frequencies (RoPE-ViT Eq. 11-12; timm ``RotaryEmbeddingMixed``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .base import PEState
from .common import GridPositions, grid_coords
from .registry import ZooEntry, register_pos_encoding
from .rotary import RotaryPE, rope_mixed_angles, rope_mixed_init, rotate_pairs
from .strategy import NO_STRATEGY


@dataclass
class MixedRotationState(PEState):
    coords: Optional[torch.Tensor]  # (N, rank) patch coordinates (None: drawn per sample, ``positions``)
    freqs: torch.Tensor  # (rank, depth | 1, heads, head_dim/2), after the resolution strategy
    num_prefix: int
    positions: Optional[GridPositions] = None


@register_pos_encoding
class RoPEMixed(RotaryPE):
    """Learned frequencies per layer and head; the angle of a channel pair is c*f_x + r*f_y (+ t*f_t).
    ``freqs`` has shape (rank, depth, heads, head_dim/2), initialised with magnitudes 1/theta^(4k/d) along
    random orthogonal directions.

    3D (T, H, W): each chunk of channel pairs starts along one of 3 random orthonormal directions in (x, y, t)
    (chunk sizes ``split``, as rope_axial's); the directions are learned. At T = 1 (t = 0) the angle is c*f_x +
    r*f_y whatever f_t: the 3D form equals the 2D one on the same f_x, f_y (tested, through a 2D checkpoint).

    Options: theta (10, the paper's base), ape (also add a learned APE), antialias (of that APE's
    resampling), per_layer (frequencies per layer, True; False shares one set over all layers), split (the
    initial chunk of channel pairs per axis, grid order; None: as rope_axial), random_positions (0: off; a
    factor: randomised positions in training, ``common.GridPositions``).
    """
    name = 'rope_mixed'
    zoo = (ZooEntry('rope_mixed'), ZooEntry('rope_mixed_ape', dict(ape=True), ('small', 'base')))

    def __init__(self, *, theta: float = 10., ape: bool = False, antialias: bool = True, per_layer: bool = True,
                 split: Optional[Sequence[int]] = None, random_positions: float = 0., **common):
        super().__init__(theta=theta, ape=ape, antialias=antialias, split=split, random_positions=random_positions,
                         **common)
        self.per_layer = per_layer
        freqs = rope_mixed_init(self.head_dim, self.depth if per_layer else 1, self.num_heads, self.rank, self.theta,
                                self.split)
        self.freqs = nn.Parameter(freqs)

    def inflate_state_dict(self, state_dict, prefix, mode='central'):
        """2D frequencies (x, y rows) get a t row f_t = 0: the 2D rotation on every frame, time learned from there."""
        super().inflate_state_dict(state_dict, prefix, mode)
        f = state_dict.get(prefix + 'freqs')
        if f is not None and f.shape[0] == 2:
            state_dict[prefix + 'freqs'] = torch.cat([f, torch.zeros_like(f[:1])])

    def no_weight_decay(self):
        return {'freqs'}

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        # the rotation of each layer is built in ``qk`` when the layer runs, so inference holds one
        # layer's (heads, N, P) rotation at a time instead of all depth x heads x N x P at once
        device = device or self.default_device()
        drawn = GridPositions(self, grid.shape, strategy, device) if self.draws_positions else None
        return MixedRotationState(grid_coords(self, grid.shape, strategy, device) if drawn is None else None,
                                  self.scale_freqs(self.freqs, grid, strategy), grid.num_prefix, drawn)

    def qk(self, q, k, ctx, layer):
        state = ctx.state
        coords = state.coords if state.positions is None else state.positions.coords(q.shape[0])[:, None]
        ang = rope_mixed_angles(coords, state.freqs[:, layer if self.per_layer else 0])  # ([B,] heads, N, P)
        rot = self.with_prefix(ang, state.num_prefix)
        return rotate_pairs(q, rot), rotate_pairs(k, rot)
