"""Pre-norm transformer block (timm ``Block`` layout and parameter names)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from timm.layers import DropPath, LayerScale, Mlp

from ..pe.base import PosContext
from .attention import Attention


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, layer: int, mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_norm: bool = False, init_values: Optional[float] = None, attn_drop: float = 0.,
                 proj_drop: float = 0., drop_path: float = 0., norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        self.layer = layer
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop,
                              proj_drop=proj_drop, norm_layer=norm_layer)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: PosContext) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), ctx, self.layer)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        if ctx.pe.uses('after_block'):
            x = ctx.pe.after_block(x, ctx, self.layer)
        return x
