"""FIRE on a grid (Li et al., "Functional Interpolation for Relative Positions Improves Long Context Transformers",
ICLR 2024, Eq. 3-4 and its appendix code): a small MLP of the log-transformed offset, normalised by the
extent of the grid (progressive interpolation):

    1D, causal (the paper):    b_h(i, j) = f_h( psi(i - j) / psi(max(L, i)) ),   psi(x) = log(|c| x + 1)
    here, 'distance' (default): b_h(i, j) = f_h( psi(d_ij) / psi(max(L, D)) )
    here, 'axes':               b_h(i, j) = f_h( [sign(o_a) psi(|o_a|) / psi(max(L_a, D_a))]_a )

f: Linear(inputs, 32) -> ReLU -> Linear(32, heads) (the paper's width), c learned (init 0.1), the threshold
L = ``threshold`` x the training grid's largest offset (0.25: the paper's L = 512 at training length 2048); an
epsilon 1e-6 is added to the normaliser. The paper also learns a multiplier of L; here L is fixed: the
normaliser of a grid is its largest offset, larger than L at the training grid, so a learned L would get no
gradient in training (L acts only on grids smaller than it, where it keeps the offsets from being stretched).

Adaptation to bidirectional attention over a grid: the paper's normaliser is the query's position i (the number of keys a causal query
sees); here it is the largest offset of the grid this forward runs on (D = the largest distance, D_a = E_a - 1
per axis), the same for every query. 'distance' uses the Euclidean distance (unsigned, as the paper's offsets);
'axes' gives the MLP each axis's offset o_a = p_i,a - p_j,a with its sign, so a head can tell left from right.
On a 1 x N grid with L >= N - 1, 'distance' is the paper's 1D FIRE below the diagonal (its normaliser is L
for every query i < L). "As trained" at another grid: the learned f at the normalised offsets of that grid,
which stay within [-1, 1] at any size, so FIRE interpolates by construction (``pi`` scales the offsets and the
normaliser's extent alike, into the training grid's range). One MLP for all layers (``per_layer``: one per layer).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import check_bool, check_choice, check_positive, check_positive_int
from .offset_bias import OffsetBiasPE, pair_distance
from .registry import ZooEntry, register_pos_encoding

FIRE_MODES = ('distance', 'axes')
EPS = 1e-6


@register_pos_encoding
class FIRE(OffsetBiasPE):
    """Options:
        mode: 'distance' (default) or 'axes' (one signed input per axis).
        hidden_dim: the MLP's width (32); init_c: c's initial value (0.1); threshold: L as a fraction of the
            training grid's largest offset (0.25).
        per_layer: one MLP and c per layer (default False: shared by all layers).
        random_positions: 0 (off) or a factor: in training, positions drawn per sample from that many times the
            grid (Ruoss et al. 2023); the normaliser then uses the range drawn from.
    """
    name = 'fire'
    # fire_axes: the signed per-axis form, which can tell left from right (the distance form cannot: see above)
    zoo = (ZooEntry('fire'), ZooEntry('fire_axes', dict(mode='axes')))

    def __init__(self, *, mode: str = 'distance', hidden_dim: int = 32, init_c: float = 0.1, threshold: float = 0.25,
                 per_layer: bool = False, random_positions: float = 0., **common):
        super().__init__(random_positions=random_positions, **common)
        check_choice(self.name, 'mode', mode, FIRE_MODES)
        check_positive_int(self.name, 'hidden_dim', hidden_dim)
        check_positive(self.name, 'init_c', init_c)
        check_positive(self.name, 'threshold', threshold)
        check_bool(self.name, 'per_layer', per_layer)
        self.mode, self.per_layer = mode, per_layer
        layers = self.depth if per_layer else 1
        inputs = self.rank if mode == 'axes' else 1
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(inputs, hidden_dim), nn.ReLU(),
                                                 nn.Linear(hidden_dim, self.num_heads)) for _ in range(layers)])
        self.c = nn.Parameter(torch.full((layers,), float(init_c)))
        # L in patches of the training grid: a persistent buffer, so a checkpoint keeps its threshold at any size
        largest = [s - 1. for s in self.grid_size]
        l0 = largest if mode == 'axes' else [math.sqrt(sum(x * x for x in largest))]
        self.register_buffer('threshold_patches', torch.tensor(l0) * threshold)

    def psi(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        return torch.log(torch.abs(self.c[layer].float() * x) + 1)

    def offset_bias(self, offsets, layer, positions):
        scale = positions.scale or (1.,) * len(positions.extents)
        largest = torch.tensor([(e - 1) * s for e, s in zip(positions.extents, scale)], device=offsets.device)
        threshold = self.threshold_patches.float()
        if self.mode == 'distance':
            x = pair_distance(offsets)[:, None]  # (M, 1)
            largest = pair_distance(largest)[None]
        else:
            x = offsets
        norm = self.psi(torch.maximum(threshold, largest), layer) + EPS
        inputs = torch.sign(x) * self.psi(x.abs(), layer) / norm
        mlp = self.mlps[layer]
        return mlp(inputs.to(mlp[0].weight.dtype)).float().t()  # (heads, M)
