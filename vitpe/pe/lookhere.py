"""LookHere (Fuller et al., "LookHere: Vision Transformers with Directed Attention Generalize and Extrapolate",
NeurIPS 2024; GreenCUBIC/lookhere ``create_lh_bias_tensor``): every head looks in one direction, through a 2D
mask, and is penalised linearly with distance:

    logits_ij += -g * s_l * m_h * d(p_i, p_j)   where key j lies in head h's field of view from query i,
    logits_ij  = -inf                           elsewhere,

d the Euclidean distance in patches (``distance``: 'linear' d, 'sqrt' or 'square' as the reference offers), g the
global slope and s_l the layer slope (linear from ``layer_slopes[0]`` in the first layer to ``layer_slopes[1]`` in
the last). ``directions`` names a set of four fields of view, or groups of sets joined by '-'; dy, dx are the key's
position minus the query's (rows grow downwards), and the triangles are the 90-degree cones between the diagonals,
tri_up dy <= -|dx|, tri_down dy >= |dx|, tri_left dx <= -|dy|, tri_right dx >= |dy|:

    'halves' (180): up dy <= 0, down dy >= 0, left dx <= 0, right dx >= 0;
    'diagonals' (180): tri_up or tri_right, tri_up or tri_left, tri_down or tri_right, tri_down or tri_left;
    'corners' (90): up-left, up-right, down-left, down-right (both halves);
    'triangles' (90): tri_up, tri_down, tri_left, tri_right;
    'eighths1' (45): tri_up and left, tri_down and left, tri_left and up, tri_right and up;
    'eighths2' (45): tri_up and right, tri_down and right, tri_left and down, tri_right and down;
    'none': every key, penalised (2D ALiBi); 'zero': every key, no penalty (no position at all).

The paper's models are groups: LH-180 'halves-diagonals-none' (``'lh180'``, the default), LH-90
'corners-triangles-none' (``'lh90'``), LH-45 'eighths1-eighths2-none' (``'lh45'``), each with g = 2 and layer
slopes 1.5 to 0.5 (the configs that load the authors' ImageNet weights, DanielKyr/mmsegmentation
configs/lookhere/LH{2,4,8}-ADE.py; the reference code itself has no defaults). Heads go to the groups as the
reference deals them for 6, 12 and 16 heads: blocks of four heads, spread evenly with the extra blocks to the
first groups (12 heads, 2 groups: 8 + 4; 16 heads, 3 groups: 8 + 4 + 4), then the heads left over (fewer than
four) to the next group, in its order of directions (6 heads: 4 + 2). Within a group the i-th head takes
direction i mod 4 and slope m = 2^-(1 + floor(i / 4)) (the reference's ``get_slopes``); 'none' and 'zero' heads
take 1/4, 1/16, 1/64, 1/256 (``get_none_slopes``, each repeated for more than four heads).

Every field of view holds the query's own patch, so no row is fully masked; prefix tokens see and are seen
without mask or penalty (the reference's class token). Adaptations stated: the reference supports 6 heads and
multiples of 4; other counts follow the rule above, so ViT-Tiny's 3 heads with LH-180 are the first three
'halves' heads (up, down, left: no head of a layer looks right; the query's right reaches it through other
patches over the layers), and the micro model's 4 heads are one 'halves' group. In 3D the fields of view are
those of the (row, col) plane for every frame (time is not masked) and d is the (t, row, col) distance. "As
trained" at another grid: the same masks (defined by direction, so scale-free) and the same penalty per patch
of distance, so a head sees farther at a larger grid, with larger penalties; ``pi`` scales distances into the
training grid's range. No parameters.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from .common import check_choice, check_positive
from .offset_bias import OffsetBiasPE, pair_distance
from .registry import register_pos_encoding

DIRECTION_SETS = ('halves', 'diagonals', 'corners', 'triangles', 'eighths1', 'eighths2', 'none', 'zero')
VARIANTS = {'lh180': 'halves-diagonals-none', 'lh90': 'corners-triangles-none', 'lh45': 'eighths1-eighths2-none'}
DISTANCES = ('linear', 'sqrt', 'square')
NONE_SLOPES = (1 / 4, 1 / 16, 1 / 64, 1 / 256)


def fields_of_view(directions: str, dy: torch.Tensor, dx: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The four fields of view of set ``directions`` (head i of a group looks through the (i mod 4)-th): whether a
    key at offset (dy, dx) from the query (key minus query) is in it."""
    if directions in ('none', 'zero'):
        return (torch.ones_like(dy, dtype=torch.bool),) * 4
    up, down, left, right = dy <= 0, dy >= 0, dx <= 0, dx >= 0
    t_up, t_down, t_left, t_right = dy <= -dx.abs(), dy >= dx.abs(), dx <= -dy.abs(), dx >= dy.abs()
    return {
        'halves': (up, down, left, right),
        'diagonals': (t_up | t_right, t_up | t_left, t_down | t_right, t_down | t_left),
        'corners': (up & left, up & right, down & left, down & right),
        'triangles': (t_up, t_down, t_left, t_right),
        'eighths1': (t_up & left, t_down & left, t_left & up, t_right & up),
        'eighths2': (t_up & right, t_down & right, t_left & down, t_right & down),
    }[directions]


def deal_heads(groups: List[str], num_heads: int) -> List[Tuple[str, int, int]]:
    """(group, index within the group, heads in the group) of every head: blocks of four heads over the groups, the
    extra blocks to the first groups, then the remaining heads to the next group (module docstring)."""
    blocks, rest = divmod(num_heads, 4)
    sizes = [4 * (blocks // len(groups) + (g < blocks % len(groups))) for g in range(len(groups))]
    if rest:
        sizes[next((g for g, n in enumerate(sizes) if n == 0), len(groups) - 1)] += rest
    return [(name, i, n) for name, n in zip(groups, sizes) for i in range(n)]


def head_slope(group: str, index: int, size: int) -> float:
    """m_h of the ``index``-th of ``size`` heads of a group (the reference's ``get_slopes`` / ``get_none_slopes``)."""
    if group == 'zero':
        return 0.
    if group == 'none':
        return NONE_SLOPES[min(index // max(size // 4, 1), 3)]
    return 2. ** -(1 + index // 4)


@register_pos_encoding
class LookHere(OffsetBiasPE):
    """Options:
        directions: 'lh180' (the default), 'lh90', 'lh45', a set of ``DIRECTION_SETS`` or sets joined by '-'.
        global_slope: g (2.0), layer_slopes: (first, last) layer slope (1.5, 0.5): the paper's models.
        distance: 'linear' (the paper's), 'sqrt' or 'square' of the Euclidean distance.
        random_positions: 0 (off) or a factor: in training, positions drawn per sample from that many times the
            grid (Ruoss et al. 2023).
    """
    name = 'lookhere'

    def __init__(self, *, directions: str = 'lh180', global_slope: float = 2.0,
                 layer_slopes: Tuple[float, float] = (1.5, 0.5), distance: str = 'linear',
                 random_positions: float = 0., **common):
        super().__init__(random_positions=random_positions, **common)
        groups = VARIANTS.get(directions, directions).split('-') if isinstance(directions, str) else [directions]
        if any(group not in DIRECTION_SETS for group in groups):
            raise ValueError(f"lookhere: invalid directions={directions!r}; expected one of {list(VARIANTS)}, a set "
                             f"of {list(DIRECTION_SETS)}, or sets joined by '-'")
        check_choice(self.name, 'distance', distance, DISTANCES)
        check_positive(self.name, 'global_slope', global_slope)
        if not isinstance(layer_slopes, (tuple, list)) or len(layer_slopes) != 2:
            raise ValueError(f"lookhere: invalid layer_slopes={layer_slopes!r}; expected (first, last)")
        for s in layer_slopes:
            check_positive(self.name, 'layer_slopes', s)
        self.directions, self.distance, self.global_slope = directions, distance, float(global_slope)
        self.heads = deal_heads(groups, self.num_heads)
        self.layer_slopes = tuple(float(s) for s in layer_slopes)
        self.per_layer = self.layer_slopes[0] != self.layer_slopes[1]

    def layer_slope(self, layer: int) -> float:
        first, last = self.layer_slopes
        return first + (last - first) * layer / max(self.depth - 1, 1)

    def offset_bias(self, offsets, layer, positions):
        dist = pair_distance(offsets)
        dist = {'linear': dist, 'sqrt': dist.sqrt(), 'square': dist.square()}[self.distance]
        dy, dx = -offsets[:, -2], -offsets[:, -1]  # offsets are query minus key
        views = {group: fields_of_view(group, dy, dx) for group, _, _ in self.heads}  # once per set, not per head
        rows = []
        for group, index, size in self.heads:
            slope = self.global_slope * self.layer_slope(layer) * head_slope(group, index, size)
            rows.append(torch.where(views[group][index % 4], -slope * dist, torch.full_like(dist, float('-inf'))))
        return torch.stack(rows)
