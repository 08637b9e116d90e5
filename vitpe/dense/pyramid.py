"""ViTDet's simple feature pyramid (Li et al. 2022, Sec. 3 and Fig. 2c; detectron2 ``SimpleFeaturePyramid``):
from the single stride-16 map of a plain ViT, stride 8 and 4 by 2x2 transposed convolutions (two, with norm and
GELU between, for 4), stride 32 by 2x2 max pooling; each level then a 1x1 and a 3x3 convolution, each followed
by a norm; stride 64 max-pools the stride-32 output (kernel 1, stride 2, detectron2 / torchvision
``LastLevelMaxPool``)."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import LayerNorm2d

NORMS = ('ln', 'bn', 'gn', 'none')
STRIDES = (4, 8, 16, 32, 64)


def norm_layer(norm: str, channels: int) -> nn.Module:
    if norm not in NORMS:
        raise ValueError(f"invalid norm={norm!r}; expected one of {list(NORMS)}")
    if norm == 'gn' and channels % 32:
        raise ValueError(f"norm='gn' uses 32 groups: channels={channels} is not a multiple of 32")
    return {'ln': lambda: LayerNorm2d(channels), 'bn': lambda: nn.BatchNorm2d(channels),
            'gn': lambda: nn.GroupNorm(32, channels), 'none': nn.Identity}[norm]()


def conv_norm(cin: int, cout: int, kernel: int, norm: str) -> nn.Sequential:
    """Convolution (no bias when a norm follows, as detectron2's ``Conv2d(bias=use_bias)``) and norm."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == 'none'),
                         norm_layer(norm, cout))


def rescale(dim: int, factor: float, norm: str) -> nn.Module:
    """The stride change of one level (``factor`` = input stride / level stride) and its output width."""
    if factor == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), norm_layer(norm, dim // 2), nn.GELU(),
                             nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
    if factor == 2:
        return nn.ConvTranspose2d(dim, dim // 2, 2, 2)
    if factor == 1:
        return nn.Identity()
    return nn.MaxPool2d(2, 2)


class SimpleFeaturePyramid(nn.Module):
    """Maps (B, in_channels, H, W) at ``in_stride`` -> one map per stride (finest first), ``out_channels`` wide.

    ``strides``: increasing, from 4, 8, 16, 32 (levels made from the input) and 64 (the max-pooled top level);
    ``num_inputs``: 1 (every level from the same map, as ViTDet) or one map per level made from the input (the
    chosen blocks of ``ViTBackbone.out_indices``, finest level from the first)."""

    def __init__(self, in_channels: int, out_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32),
                 norm: str = 'ln', in_stride: int = 16, num_inputs: int = 1):
        super().__init__()
        strides = tuple(strides)
        if not strides or list(strides) != sorted(set(strides)) or any(s not in STRIDES for s in strides) \
                or strides == (64,):
            raise ValueError(f"invalid strides={strides!r}; expected increasing strides from {list(STRIDES)}")
        self.strides, self.out_channels = strides, out_channels
        self.top_block = strides[-1] == 64
        made = [s for s in strides if s != 64]
        if self.top_block and made[-1] != 32:
            raise ValueError(f"strides={strides!r}: the stride-64 level pools the stride-32 one; add 32")
        if num_inputs not in (1, len(made)):
            raise ValueError(f"{num_inputs} input maps for {len(made)} levels; expected 1 or {len(made)}")
        self.num_inputs = num_inputs
        factors = [in_stride / s for s in made]
        widths = [in_channels // int(f) if f > 1 else in_channels for f in factors]
        self.levels = nn.ModuleList([
            nn.Sequential(rescale(in_channels, f, norm), conv_norm(w, out_channels, 1, norm),
                          conv_norm(out_channels, out_channels, 3, norm)) for f, w in zip(factors, widths)])
        if any(not math.log2(f).is_integer() or f > 4 or f < 0.5 for f in factors):
            raise ValueError(f"strides {made} from a stride-{in_stride} map: only x4, x2, x1 and /2 are built")

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} input maps, got {len(features)}")
        maps = list(features) * len(self.levels) if self.num_inputs == 1 else list(features)
        out = [level(x) for level, x in zip(self.levels, maps)]
        if self.top_block:
            out.append(F.max_pool2d(out[-1], kernel_size=1, stride=2))
        return out
