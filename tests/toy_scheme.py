"""A scheme defined only here, loaded as a pytest plugin (``-p toy_scheme``) by ``test_toy_scheme.py`` in its own
process: a per-head learned slope times the Manhattan distance between patches (a 2D ALiBi-like bias, built
with the shared ``grid_bias`` helper). Registering it is all it takes to get zoo models, the contract tests
and a catalogue row."""
import torch
from torch import nn

from vitpe.pe import PositionalEncoding, ZooEntry, grid_bias, register_pos_encoding
from vitpe.pe.common import coord_grid


@register_pos_encoding
class ToyDistanceBias(PositionalEncoding):
    """logits_ij -= m_h |p_i - p_j|_1 between patch tokens; no bias to or from prefix tokens."""
    name = 'toy'
    hooks = frozenset({'bias'})
    zoo = (ZooEntry('toy', sizes=('micro', 'tiny')),)

    def __init__(self, *, slope: float = 0.5, **common):
        super().__init__(**common)
        self.slopes = nn.Parameter(torch.full((self.num_heads,), float(slope)))

    def bias(self, q, k, ctx, layer, rows=slice(None)):
        coords = coord_grid(ctx.grid.shape, device=q.device)

        def add_patch_part(skip, patch_rows, out):
            distance = (coords[patch_rows, None] - coords[None]).abs().sum(-1)  # (rows, N_patch)
            return out.sub_(self.slopes[:, None, None].to(out.dtype) * distance)
        return grid_bias(rows, ctx.grid, (1, self.num_heads), add_patch_part, dtype=q.dtype, device=q.device)
