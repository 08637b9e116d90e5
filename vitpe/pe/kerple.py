"""KERPLE on a grid (Chi et al., "KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation",
NeurIPS 2022; chijames/KERPLE ``ParallelKerpleLog`` / ``ParallelKerplePower``), bidirectional and in 2D / 3D, on
the distance d between patch positions ((row, col), or (t, row, col)):

    logarithmic (default, the paper's best):  logits_ij += -r1_h * log(1 + r2_h * d(p_i, p_j))
    power:                                     logits_ij += -r1_h * d(p_i, p_j) ^ r2_h

with r1, r2 > 0 learned per head (clamped to >= 0.01, the power's exponent to <= 2, as the reference does after
every step), initialised as the reference: log r1 ~ U(0, 2), r2 ~ U(0, 1); power r1 ~ U(0, 1), r2 ~ U(0, 2).
The reference shares one set over all layers (``per_layer=True`` learns one per layer). On a 1 x N grid this is
the paper's 1D kernel of |i - j|. At another grid the learned kernel is evaluated at the new distances ("as
trained").
"""
from __future__ import annotations

import torch
from torch import nn

from .common import check_bool, check_choice
from .offset_bias import OffsetBiasPE, pair_distance, straight_through_clamp
from .registry import register_pos_encoding

KERNELS = ('log', 'power')
EPS = 1e-2  # the reference's lower clamp of both parameters


@register_pos_encoding
class KERPLE(OffsetBiasPE):
    """Options:
        kernel: 'log' (default) or 'power'.
        distance: 'euclidean' (default) or 'manhattan'.
        per_layer: one (r1, r2) per layer (default False: one set shared by all layers, as the reference).
        random_positions: 0 (off) or a factor: in training, positions drawn per sample from that many times the
            grid (Ruoss et al. 2023).
    """
    name = 'kerple'

    def __init__(self, *, kernel: str = 'log', distance: str = 'euclidean', per_layer: bool = False,
                 random_positions: float = 0., **common):
        super().__init__(random_positions=random_positions, **common)
        check_choice(self.name, 'kernel', kernel, KERNELS)
        self.check_distance(self.name, distance)
        check_bool(self.name, 'per_layer', per_layer)
        self.kernel, self.distance, self.per_layer = kernel, distance, per_layer
        layers = self.depth if per_layer else 1
        r1_scale, r2_scale = (2., 1.) if kernel == 'log' else (1., 2.)
        self.r1 = nn.Parameter(torch.rand(layers, self.num_heads) * r1_scale)
        self.r2 = nn.Parameter(torch.rand(layers, self.num_heads) * r2_scale)

    def offset_bias(self, offsets, layer, positions):
        d = pair_distance(offsets, self.distance)[None]  # (1, M)
        r1 = straight_through_clamp(self.r1[layer].float(), EPS)[:, None]
        if self.kernel == 'log':
            r2 = straight_through_clamp(self.r2[layer].float(), EPS)[:, None]
            return -r1 * torch.log1p(r2 * d)
        r2 = straight_through_clamp(self.r2[layer].float(), EPS, 2.)[:, None]
        return -r1 * d.pow(r2)
