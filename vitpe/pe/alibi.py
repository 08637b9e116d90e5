"""ALiBi on a grid (Press et al., "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022; ofirpress/attention_with_linear_biases), bidirectional and in 2D / 3D:

    logits_ij += -m_h * d(p_i, p_j)

with d the Euclidean (default) or Manhattan distance (RMT's spatial decay) between the patch positions
((row, col), or (t, row, col) in 3D) and m_h ALiBi's geometric slopes: 2^(-8 h / H), h = 1..H, for H a power of
two; otherwise those of the nearest lower power of two followed by every other slope of the next one (the paper's
``get_slopes``). The causal 1D form -m_h (i - j), j <= i, is this bias on a 1 x N grid below the diagonal.
No parameters: at another grid the same slopes apply per patch of distance ("as trained"); with ``pi`` the
distances are scaled by training / test grid.
"""
from __future__ import annotations

import math
from typing import List

import torch

from .offset_bias import OffsetBiasPE, pair_distance
from .registry import register_pos_encoding


def alibi_slopes(num_heads: int) -> List[float]:
    """ALiBi's head slopes (the reference ``get_slopes``): 2^(-8/n) ... 2^(-8) for n a power of two."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][:num_heads - closest]


@register_pos_encoding
class ALiBi(OffsetBiasPE):
    """Options:
        distance: 'euclidean' (default) or 'manhattan'.
        random_positions: 0 (off) or a factor: in training, positions drawn per sample from that many times the
            grid (Ruoss et al. 2023).
    """
    name = 'alibi'

    def __init__(self, *, distance: str = 'euclidean', random_positions: float = 0., **common):
        super().__init__(random_positions=random_positions, **common)
        self.check_distance(self.name, distance)
        self.distance = distance
        self.slopes = alibi_slopes(self.num_heads)

    def offset_bias(self, offsets, layer, positions):
        slopes = torch.tensor(self.slopes, device=offsets.device, dtype=torch.float32)
        return -slopes[:, None] * pair_distance(offsets, self.distance)[None]
