"""CPE / PEG (Chu et al., "Conditional Positional Encodings for Vision Transformers", ICLR 2023; Meituan-AutoML
CPVT and Twins ``PosCNN``; timm twins ``PosConv``)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import PositionalEncoding
from .common import check_kernel, conv_on_grid, depthwise_conv
from .registry import register_pos_encoding


@register_pos_encoding
class ConditionalPE(PositionalEncoding):
    """After each chosen block, patch tokens on the grid get x <- x + DWConv(x) (zero padding, bias); prefix
    tokens pass through. The convolution is initialised as in CPVT / Twins: weights N(0, sqrt(2 / fan_out))
    with fan_out = prod(kernel) x out_channels / groups, bias zero.

    3D (T, H, W): a depthwise Conv3d, k x k x k. With one frame and zero padding only its central temporal slice
    acts, so a 2D checkpoint inflated on that slice (``inflate_state_dict``, 'central') gives the 2D output.

    Options: blocks (indices of the blocks it follows, default (0,)), kernel_size (3).
    """
    name = 'cpe'
    hooks = frozenset({'after_block'})

    def __init__(self, *, blocks: Sequence[int] = (0,), kernel_size: int = 3, **common):
        super().__init__(**common)
        check_kernel(self.name, kernel_size)
        blocks = tuple(blocks) if not isinstance(blocks, int) else (blocks,)
        if not blocks or any((not isinstance(b, int)) or not 0 <= b < self.depth for b in blocks):
            raise ValueError(f"cpe: invalid blocks={blocks!r}; expected block indices in [0, {self.depth})")
        self.blocks = blocks
        self.convs = nn.ModuleList([depthwise_conv(self.rank, self.dim, kernel_size) for _ in blocks])
        self.init_weights()

    def init_weights(self):
        for conv in self.convs:  # Twins / CPVT ``_init_weights`` for Conv2d
            fan_out = math.prod(conv.kernel_size) * conv.out_channels // conv.groups
            nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)

    def after_block(self, x, ctx, layer):
        if layer not in self.blocks:
            return x
        p = ctx.grid.num_prefix
        conv = self.convs[self.blocks.index(layer)]
        patches = x[:, p:]
        return torch.cat([x[:, :p], patches + conv_on_grid(conv, patches, ctx.grid.shape)], dim=1)
