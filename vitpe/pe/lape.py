"""LaPE, layer-adaptive position embedding (Yu et al., ICCV 2023; Ingrid725/LaPE ``join_type='LaPE'``).

The PE p_0 is never written to the residual stream. Block l normalises it with its own LayerNorm,
p_l = LN_pe^l(p_{l-1}) (chained, as the reference code), and attends over LN_1^l(x) + p_l.
"""
from __future__ import annotations

import torch
from torch import nn

from .absolute import LearnedTable
from .base import PositionalEncoding, check_choice, register_pos_encoding
from .functional import sincos_embed


@register_pos_encoding
class LayerAdaptivePE(PositionalEncoding):
    """Options: base ('learned' table with rows for prefix tokens, as DeiT, or 'sincos' with zero rows
    for prefix tokens)."""
    name = 'lape'

    def __init__(self, *, base: str = 'learned', **common):
        super().__init__(**common)
        check_choice(self.name, 'base', base, ('learned', 'sincos'))
        self.base = base
        self.table = LearnedTable(self.grid_size, self.dim, self.num_prefix_tokens) if base == 'learned' else None
        if base == 'sincos':
            sincos_embed(self.grid_size, self.dim)  # validates dim against the rank
        self.norms = nn.ModuleList([nn.LayerNorm(self.dim, eps=1e-6) for _ in range(self.depth)])

    def initial(self, grid) -> torch.Tensor:
        """p_0 over all tokens, (1, p + N, D)."""
        if self.table is not None:
            return self.table.add(self, self.table.weight.new_zeros(1, grid.num_tokens, self.dim), grid)
        pos = self.cached(('sincos', grid.shape), lambda: sincos_embed(grid.shape, self.dim, device=self.scheme.device))
        return torch.cat([pos.new_zeros(grid.num_prefix, self.dim), pos])[None]

    def prepare(self, grid):
        self.check_grid(grid)
        chain = [self.initial(grid)]  # p_0
        if torch.is_grad_enabled():  # with autograd: the whole chain here, outside any checkpointed block
            for norm in self.norms:
                chain.append(norm(chain[-1]))  # p_l = LN_pe^l(p_{l-1})
        return {'pe': chain}

    def attn_input(self, h, ctx, layer):
        chain = ctx.state['pe']
        while len(chain) <= layer + 1:  # without autograd: p_l built when block l runs, p_{l-1} dropped
            chain.append(self.norms[len(chain) - 1](chain[-1]))
            chain[-2] = None
        return h + chain[layer + 1].to(h.dtype)
