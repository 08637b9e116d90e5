"""LaPE, layer-adaptive position embedding (Yu et al., ICCV 2023; Ingrid725/LaPE ``join_type='LaPE'``).

The PE p_0 is never written to the residual stream. Block l normalises it with its own LayerNorm,
p_l = LN_pe^l(p_{l-1}) (chained, as the reference code), and attends over LN_1^l(x) + p_l.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from .base import PEState, PositionalEncoding
from .common import LearnedTable, check_choice, sincos_embed
from .registry import register_pos_encoding
from .strategy import NO_STRATEGY


@dataclass
class LaPEChain(PEState):
    """p_0, p_1, ...: all of them with autograd (built in ``prepare``, outside checkpointed blocks), else
    built block by block in ``attn_input`` with the previous one dropped."""
    pe: List[Optional[torch.Tensor]]


@register_pos_encoding
class LayerAdaptivePE(PositionalEncoding):
    """Options: base ('learned' table with rows for prefix tokens, as DeiT, or 'sincos' with zero rows
    for prefix tokens); antialias (of the learned table's resampling; True as timm).

    3D (T, H, W): p_0 is a (T, H, W) table (at T = 1 the 2D table: the same output on the same weights), or the
    3D sin-cos embedding (which, as ``sincos``, does not reduce to the 2D one at T = 1)."""
    name = 'lape'
    hooks = frozenset({'attn_input'})

    def __init__(self, *, base: str = 'learned', antialias: bool = True, **common):
        super().__init__(**common)
        check_choice(self.name, 'base', base, ('learned', 'sincos'))
        self.base = base
        self.table = LearnedTable(self.grid_size, self.dim, self.num_prefix_tokens, antialias=antialias,
                                  scheme=self.name) if base == 'learned' else None
        if base == 'sincos':
            sincos_embed(self.grid_size, self.dim)  # validates dim against the rank
        self.norms = nn.ModuleList([nn.LayerNorm(self.dim, eps=1e-6) for _ in range(self.depth)])

    def initial(self, grid, strategy=NO_STRATEGY, device=None) -> torch.Tensor:
        """p_0 over all tokens, (1, p + N, D)."""
        if self.table is not None:
            return self.table.add(self, self.table.weight.new_zeros(1, grid.num_tokens, self.dim), grid, strategy)
        device = device or self.default_device()
        pos = self.cached(('sincos', grid.shape, device), lambda: sincos_embed(grid.shape, self.dim, device=device))
        return torch.cat([pos.new_zeros(grid.num_prefix, self.dim), pos])[None]

    def prepare(self, grid, strategy=NO_STRATEGY, device=None):
        chain = [self.initial(grid, strategy, device)]  # p_0
        if torch.is_grad_enabled():  # with autograd: the whole chain here, outside any checkpointed block
            for norm in self.norms:
                chain.append(norm(chain[-1]))  # p_l = LN_pe^l(p_{l-1})
        return LaPEChain(chain)

    def attn_input(self, h, ctx, layer):
        chain = ctx.state.pe
        while len(chain) <= layer + 1:  # without autograd: p_l built when block l runs, p_{l-1} dropped
            chain.append(self.norms[len(chain) - 1](chain[-1]))
            chain[-2] = None
        return h + chain[layer + 1].to(h.dtype)
