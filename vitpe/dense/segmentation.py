"""Semantic segmentation over a vitpe backbone and simple feature pyramid: UPerNet's head (Xiao et al.,
"Unified Perceptual Parsing", ECCV 2018; mmsegmentation ``UPerHead``) or the semantic FPN branch (Kirillov et al.,
"Panoptic Feature Pyramid Networks", CVPR 2019, Fig. 3), built by name.

``num_classes`` counts object classes without background, as in the detectors: the model predicts
``num_classes + 1`` classes, 0 being background; masks hold 0 .. num_classes, and ``ignore_index`` (255) where no
label counts."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .backbone import DenseBackbone, build_backbone
from .detection import check_num_classes

__all__ = ['SEGMENTERS', 'Segmenter', 'UPerHead', 'SemanticFPNHead', 'build_segmenter']


def conv_bn_relu(cin: int, cout: int, kernel: int, norm: str = 'bn') -> nn.Sequential:
    norm_layer = nn.BatchNorm2d(cout) if norm == 'bn' else nn.GroupNorm(32 if cout % 32 == 0 else 1, cout)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), norm_layer,
                         nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class UPerHead(nn.Module):
    """A pyramid pooling module (PSPNet, pool scales 1, 2, 3, 6) on the coarsest level, an FPN top-down path over
    the others, every level brought to the finest and fused by a 3x3 convolution (mmseg ``UPerHead``)."""

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.pools = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1))
                                    for s in pool_scales])
        self.ppm_bottleneck = conv_bn_relu(in_channels + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList([conv_bn_relu(in_channels, channels, 1) for _ in range(num_levels - 1)])
        self.fpn_convs = nn.ModuleList([conv_bn_relu(channels, channels, 3) for _ in range(num_levels - 1)])
        self.fpn_bottleneck = conv_bn_relu(num_levels * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        ppm = [top] + [resize(pool(top), top.shape[2:]) for pool in self.pools]
        laterals = [lat(f) for lat, f in zip(self.laterals, feats[:-1])] + [self.ppm_bottleneck(torch.cat(ppm, 1))]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level plus the coarser one upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        fused = torch.cat([outs[0]] + [resize(o, outs[0].shape[2:]) for o in outs[1:]], 1)
        return self.classifier(self.dropout(self.fpn_bottleneck(fused)))


class SemanticFPNHead(nn.Module):
    """Each level brought to the finest stride by 3x3 conv + GroupNorm + ReLU (+ 2x bilinear upsampling) stages,
    one per halving of the stride (one stage without upsampling for the finest), summed, then a 1x1 classifier."""

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        finest = strides[0]
        self.branches = nn.ModuleList()
        for s in strides:
            ups = int(math.log2(s // finest))
            stages = []
            for k in range(max(ups, 1)):
                stages.append(conv_bn_relu(in_channels if k == 0 else channels, channels, 3, norm='gn'))
                if ups:
                    stages.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False))
            self.branches.append(nn.Sequential(*stages))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[2:]
        out = sum(resize(branch(f), size) for branch, f in zip(self.branches, feats))  # resize: odd sizes
        return self.classifier(self.dropout(out))


class Segmenter(nn.Module):
    """Backbone + pyramid + head. Images (B, 3, H, W) in [0, 1] (any H, W: padded to the coarsest stride, the
    logits cropped back); ``model(images)`` gives logits (B, num_classes + 1, H, W); ``model(images, masks)`` the
    loss ``{'loss_seg': cross entropy}``; ``predict(images)`` the label maps (B, H, W)."""

    def __init__(self, backbone: DenseBackbone, head: nn.Module, num_classes: int, ignore_index: int = 255,
                 image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 image_std: Sequence[float] = IMAGENET_DEFAULT_STD):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.register_buffer('mean', torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None):
        h, w = images.shape[2:]
        div = max(self.backbone.strides)
        x = F.pad((images - self.mean) / self.std, (0, -w % div, 0, -h % div))
        logits = resize(self.head(list(self.backbone(x).values())), x.shape[2:])[:, :, :h, :w]
        if masks is None:
            return logits
        return {'loss_seg': F.cross_entropy(logits, masks.long(), ignore_index=self.ignore_index)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).argmax(1)


SEGMENTERS = ('upernet', 'semantic_fpn')


def build_segmenter(name: str, backbone: str, num_classes: int, *, strides: Sequence[int] = (4, 8, 16, 32),
                    out_channels: int = 256, norm: str = 'ln', channels: Optional[int] = None,
                    backbone_args: Optional[Dict[str, Any]] = None, **segmenter_args) -> Segmenter:
    """``Segmenter`` with head ``name`` ('upernet' or 'semantic_fpn') over the vitpe zoo model ``backbone``
    and a simple feature pyramid of ``strides``; ``channels``: the head's width (512 for UPerNet, 128 for semantic
    FPN, as their papers); ``backbone_args`` go to ``ViTBackbone``, ``segmenter_args`` to ``Segmenter``
    (ignore_index, image_mean, image_std)."""
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; expected one of {list(SEGMENTERS)}")
    num_classes = check_num_classes(num_classes)
    dense = build_backbone(backbone, strides=strides, out_channels=out_channels, norm=norm, **(backbone_args or {}))
    if name == 'upernet':
        head = UPerHead(out_channels, len(dense.names), num_classes + 1, channels or 512)
    else:
        head = SemanticFPNHead(out_channels, dense.strides, num_classes + 1, channels or 128)
    return Segmenter(dense, head, num_classes, **segmenter_args)
