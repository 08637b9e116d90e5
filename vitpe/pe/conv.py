"""Schemes that get position from a depthwise convolution with zero padding, so they run on any grid:
cpe (PEG, after chosen blocks) and lepe (on V inside every attention)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import PositionalEncoding, register_pos_encoding


def depthwise_conv(rank: int, channels: int, kernel_size: int) -> nn.Module:
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[rank]
    return conv(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


def check_kernel(scheme: str, kernel_size) -> None:
    if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"{scheme}: invalid kernel_size={kernel_size!r}; expected a positive odd integer")


def conv_on_grid(conv: nn.Module, x: torch.Tensor, shape) -> torch.Tensor:
    """conv applied to patch tokens (B, N, C) laid out on the grid ``shape``; returns (B, N, C)."""
    b, n, c = x.shape
    y = conv(x.transpose(1, 2).reshape(b, c, *shape))
    return y.flatten(2).transpose(1, 2)


@register_pos_encoding
class ConditionalPE(PositionalEncoding):
    """CPE / PEG (Chu et al., ICLR 2023, "Conditional Positional Encodings"; timm twins ``PosConv``):
    after each chosen block, patch tokens on the grid get x <- x + DWConv(x) (zero padding, bias);
    prefix tokens pass through.

    Options: blocks (indices of the blocks it follows, default (0,)), kernel_size (3).
    """
    name = 'cpe'

    def __init__(self, *, blocks: Sequence[int] = (0,), kernel_size: int = 3, **common):
        super().__init__(**common)
        check_kernel(self.name, kernel_size)
        blocks = tuple(blocks) if not isinstance(blocks, int) else (blocks,)
        if not blocks or any((not isinstance(b, int)) or not 0 <= b < self.depth for b in blocks):
            raise ValueError(f"cpe: invalid blocks={blocks!r}; expected block indices in [0, {self.depth})")
        self.blocks = blocks
        self.convs = nn.ModuleList([depthwise_conv(self.rank, self.dim, kernel_size) for _ in blocks])

    def after_block(self, x, ctx, layer):
        if layer not in self.blocks:
            return x
        p = ctx.grid.num_prefix
        conv = self.convs[self.blocks.index(layer)]
        patches = x[:, p:]
        return torch.cat([x[:, :p], patches + conv_on_grid(conv, patches, ctx.grid.shape)], dim=1)


@register_pos_encoding
class LocallyEnhancedPE(PositionalEncoding):
    """LePE (CSWin, Dong et al., CVPR 2022, ``LePEAttention``): in every attention,
    out = softmax(q k^T / sqrt(d)) V + DWConv(V), the conv over V laid out on the grid (all heads'
    channels, one depthwise filter each). Prefix tokens get no conv term.

    Options: kernel_size (3).
    """
    name = 'lepe'

    def __init__(self, *, kernel_size: int = 3, **common):
        super().__init__(**common)
        check_kernel(self.name, kernel_size)
        self.convs = nn.ModuleList([depthwise_conv(self.rank, self.dim, kernel_size) for _ in range(self.depth)])

    def value(self, out, v, attn, ctx, layer, rows=slice(None)):
        if rows != slice(None):
            raise NotImplementedError("lepe adds no bias, so attention never runs it in row chunks")
        p = ctx.grid.num_prefix
        b, h, n, d = v.shape
        vp = v[:, :, p:].transpose(1, 2).reshape(b, n - p, h * d)
        lepe = conv_on_grid(self.convs[layer], vp, ctx.grid.shape).reshape(b, n - p, h, d).transpose(1, 2)
        return torch.cat([out[:, :, :p], out[:, :, p:] + lepe], dim=2)
