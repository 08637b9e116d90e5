"""LookHere (Fuller et al., "LookHere: Vision Transformers with Directed Attention Generalize and Extrapolate",
NeurIPS 2024; GreenCUBIC/lookhere ``create_lh_bias_tensor``): every head looks in one direction, through a 2D
mask, and is penalised linearly with distance:

    logits_ij += -g * s_l * m_h * d(p_i, p_j)   where key j lies in head h's field of view from query i,
    logits_ij  = -inf                           elsewhere,

d the Euclidean distance, m_h = 2^-(1 + floor(h / 4)) (the reference's head slopes), g the global slope and
s_l the layer slope (linear from ``layer_slopes[0]`` in the first layer to ``layer_slopes[1]`` in the last).
Fields of view (``directions``; dy, dx the key's position minus the query's, rows growing downwards), head h
taking direction h mod 4 of:

    'halves' (LookHere-180): up dy <= 0, down dy >= 0, left dx <= 0, right dx >= 0;
    'corners' (LookHere-90, default): up-left, up-right, down-left, down-right (both conditions);
    'triangles' (90-degree cones between the diagonals): up dy <= -|dx|, down dy >= |dx|, left dx <= -|dy|,
        right dx >= |dy|.

Every field of view holds the query's own patch, so no row is fully masked; prefix tokens see and are seen
without mask or penalty (the reference's class token). Adaptations stated: with a number of heads that is not a
multiple of 4 the heads still take directions h mod 4 (the reference supports multiples of 4 only): with 3 heads
(ViT-Tiny) the 'corners' heads look up-left, up-right and down-left, so no head of a layer sees the open
down-right quadrant of a query (it reaches the query through other patches over the layers); 'halves' with 3
heads covers every patch. In 3D the fields of view are those of the (row, col) plane for every frame (time is
not masked) and d is the (t, row, col) distance. "As trained" at another grid: the same masks (defined by
direction, so scale-free) and the same penalty per patch of distance, so a head sees farther at a larger grid,
with larger penalties; ``pi`` scales distances into the training grid's range. No parameters.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .common import check_choice, check_positive
from .offset_bias import OffsetBiasPE, pair_distance
from .registry import register_pos_encoding

DIRECTION_SETS = ('halves', 'corners', 'triangles')


def field_of_view(directions: str, head: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Whether a key at offset (dy, dx) from the query (key minus query) is in the field of view of ``head``."""
    up, down, left, right = dy <= 0, dy >= 0, dx <= 0, dx >= 0
    d = head % 4
    if directions == 'halves':
        return (up, down, left, right)[d]
    if directions == 'corners':
        return ((up & left), (up & right), (down & left), (down & right))[d]
    return (dy <= -dx.abs(), dy >= dx.abs(), dx <= -dy.abs(), dx >= dy.abs())[d]


@register_pos_encoding
class LookHere(OffsetBiasPE):
    """Options:
        directions: 'halves' (LookHere-180), 'corners' (LookHere-90, default) or 'triangles'.
        global_slope: g (1.0), layer_slopes: (first, last) layer slope (1.0, 1.0).
        random_positions: 0 (off) or a factor: in training, positions drawn per sample from that many times the
            grid (Ruoss et al. 2023).
    """
    name = 'lookhere'

    def __init__(self, *, directions: str = 'corners', global_slope: float = 1.0,
                 layer_slopes: Tuple[float, float] = (1.0, 1.0), random_positions: float = 0., **common):
        super().__init__(random_positions=random_positions, **common)
        check_choice(self.name, 'directions', directions, DIRECTION_SETS)
        check_positive(self.name, 'global_slope', global_slope)
        if not isinstance(layer_slopes, (tuple, list)) or len(layer_slopes) != 2:
            raise ValueError(f"lookhere: invalid layer_slopes={layer_slopes!r}; expected (first, last)")
        for s in layer_slopes:
            check_positive(self.name, 'layer_slopes', s)
        self.directions, self.global_slope = directions, float(global_slope)
        self.layer_slopes = tuple(float(s) for s in layer_slopes)
        self.per_layer = self.layer_slopes[0] != self.layer_slopes[1]

    def layer_slope(self, layer: int) -> float:
        first, last = self.layer_slopes
        return first + (last - first) * layer / max(self.depth - 1, 1)

    def offset_bias(self, offsets, layer, positions):
        dist = pair_distance(offsets)
        dy, dx = -offsets[:, -2], -offsets[:, -1]  # offsets are query minus key
        rows = []
        for h in range(self.num_heads):
            slope = self.global_slope * self.layer_slope(layer) * 2. ** -(1 + h // 4)
            rows.append(torch.where(field_of_view(self.directions, h, dy, dx), -slope * dist,
                                    torch.full_like(dist, float('-inf'))))
        return torch.stack(rows)
