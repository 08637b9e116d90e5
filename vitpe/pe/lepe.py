"""LePE, locally-enhanced positional encoding (CSWin, Dong et al., CVPR 2022, ``LePEAttention.get_lepe``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import PositionalEncoding
from .common import check_bool, check_kernel, conv_on_grid, depthwise_conv
from .registry import register_pos_encoding


@register_pos_encoding
class LocallyEnhancedPE(PositionalEncoding):
    """In every attention, out = softmax(q k^T / sqrt(d)) V + DWConv(V), the conv over V laid out on the grid
    (all heads' channels, one depthwise filter each). Prefix tokens get no conv term. The convolution keeps
    PyTorch's default initialisation, as CSWin's ``_init_weights`` (Linear and LayerNorm only) does.

    3D (T, H, W): a depthwise Conv3d over V, k x k x k (at T = 1 its central temporal slice is the 2D conv).

    Options: kernel_size (3); conv_in_window (in window-attention blocks: True, the default, convolves V within
    each attention window, zero padded at its border, as CSWin convolves within its stripes, so a window block
    stays a function of its window alone; False convolves V over the full grid, across window borders).
    """
    name = 'lepe'
    hooks = frozenset({'value'})

    def __init__(self, *, kernel_size: int = 3, conv_in_window: bool = True, **common):
        super().__init__(**common)
        check_kernel(self.name, kernel_size)
        check_bool(self.name, 'conv_in_window', conv_in_window)
        self.conv_in_window = conv_in_window
        self.convs = nn.ModuleList([depthwise_conv(self.rank, self.dim, kernel_size) for _ in range(self.depth)])

    def value(self, out, v, attn, ctx, layer, rows=slice(None)):
        """``out`` holds the query rows ``rows`` (all, or one chunk when attention runs in row chunks: with an
        observer, e.g. the attention diagnostics); the conv term is the same for any split into rows."""
        p = ctx.grid.num_prefix
        b, h, n, d = v.shape
        vp = v[:, :, p:].transpose(1, 2).reshape(b, n - p, h * d)
        layout = ctx.layout  # set in window blocks: ctx.grid is the window
        if layout is None or self.conv_in_window:
            lepe = conv_on_grid(self.convs[layer], vp, ctx.grid.shape)
        else:  # the windows' values back on the full grid, convolved there, cut into windows again
            lepe = layout.partition(conv_on_grid(self.convs[layer], layout.unpartition(vp), layout.grid))
        lepe = lepe.reshape(b, n - p, h, d).transpose(1, 2)
        return out + F.pad(lepe, (0, 0, p, 0))[:, :, rows]  # prefix tokens: no conv term
