"""A vitpe trunk as a dense backbone (ViTDet, Li et al., "Exploring Plain Vision Transformer Backbones for Object
Detection", ECCV 2022): window attention with a few global blocks, and a simple feature pyramid built from the
stride-16 map of the last block (``pyramid.py``).

Any zoo model of any scheme is a backbone (``vitpe_<size>_patch16_<scheme>_<img>``); a classification checkpoint of
it loads with its tables resized to the backbone's reference grid, as every vitpe loader does."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Sequence, Union

import timm
import torch
from torch import nn

from ..checkpoint import read_weights_file
from ..errors import CheckpointError
from ..models.vision_transformer import VisionTransformer
from ..models.zoo import zoo_table
from .pyramid import SimpleFeaturePyramid

__all__ = ['ViTBackbone', 'DenseBackbone', 'build_backbone', 'vitdet_global_blocks']


def vitdet_global_blocks(depth: int) -> tuple:
    """ViTDet's global blocks: the last of each quarter of the trunk (2, 5, 8, 11 for depth 12)."""
    step = max(depth // 4, 1)
    return tuple(range(step - 1, depth, step))


def _classification_weights(checkpoint: Union[str, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The trunk's tensors of a checkpoint (file read safely, or a state dict): the classifier head dropped."""
    sd = read_weights_file(checkpoint) if isinstance(checkpoint, str) else dict(checkpoint)
    return {k: v for k, v in sd.items() if not k.startswith('head.')}


class ViTBackbone(nn.Module):
    """The trunk of zoo model ``model`` with window attention, returning the stride-16 maps (B, D, H/16, W/16) of
    the blocks ``out_indices`` (default: the last one, as ViTDet).

    Args: window_size (14, ViTDet; None: global attention in every block), global_blocks (None: ViTDet's, the
    last block of each quarter), img_size (the reference size the tables are resized to; None: the model's own,
    the tables then resampled to each input's grid at run time), checkpoint (a classification checkpoint of the
    same model: path or state dict), norm (apply the trunk's final norm to the features; ViTDet does not),
    drop_path_rate (0.1, ViTDet-B), and any other argument of the zoo model (e.g. ``pos_enc_args``).
    """

    def __init__(self, model: str, *, window_size: Optional[Union[int, Sequence[int]]] = 14,
                 global_blocks: Optional[Sequence[int]] = None, out_indices: Sequence[int] = (-1,),
                 img_size=None, checkpoint=None, norm: bool = False, drop_path_rate: float = 0.1, **model_kwargs):
        super().__init__()
        if img_size is not None:
            model_kwargs['img_size'] = img_size
        if model not in zoo_table():
            raise ValueError(f"unknown backbone {model!r}; expected a vitpe zoo model (timm.list_models('vitpe_*'))")
        if window_size is not None and global_blocks is None:
            global_blocks = vitdet_global_blocks(model_kwargs.get('depth', zoo_table()[model]['depth']))
        self.trunk: VisionTransformer = timm.create_model(
            model, num_classes=0, window_size=window_size, global_blocks=global_blocks or (),
            drop_path_rate=drop_path_rate, **model_kwargs)
        depth = len(self.trunk.blocks)
        self.out_indices = tuple(i % depth if -depth <= i < depth else _bad_index(i, depth) for i in out_indices)
        self.norm = norm
        self.embed_dim = self.trunk.embed_dim
        self.patch_size = self.trunk.patch_embed.patch_size
        if checkpoint is not None:
            self.load_classification_checkpoint(checkpoint)

    def load_classification_checkpoint(self, checkpoint) -> None:
        """Load the trunk of a classification checkpoint (any training size: tables are resized on load)."""
        sd = _classification_weights(checkpoint)
        missing, unexpected = self.trunk.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith('head.')]
        if missing or unexpected:
            raise CheckpointError(f"the checkpoint does not fit this backbone: missing {missing[:6]}, unexpected "
                                  f"{unexpected[:6]} (is it a checkpoint of another model size?)")

    def forward(self, x: torch.Tensor):
        return self.trunk.forward_intermediates(x, indices=list(self.out_indices), norm=self.norm, stop_early=True,
                                                output_fmt='NCHW', intermediates_only=True)


def _bad_index(i: int, depth: int):
    raise ValueError(f"invalid out index {i}; the trunk has {depth} blocks")


class DenseBackbone(nn.Module):
    """ViT backbone + simple feature pyramid, in torchvision's backbone form: ``forward`` gives an OrderedDict of
    maps named '0', '1', ... (finest first) and 'pool' (the stride-64 level, when asked for), and
    ``out_channels`` is their width."""

    def __init__(self, vit: ViTBackbone, pyramid: SimpleFeaturePyramid):
        super().__init__()
        self.vit, self.pyramid = vit, pyramid
        self.out_channels = pyramid.out_channels
        self.strides = pyramid.strides
        self.names = [str(i) for i in range(len(pyramid.levels))] + (['pool'] if pyramid.top_block else [])

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        return OrderedDict(zip(self.names, self.pyramid(self.vit(x))))


def build_backbone(backbone: str, *, strides: Sequence[int] = (4, 8, 16, 32), out_channels: int = 256,
                   norm: str = 'ln', **vit_kwargs) -> DenseBackbone:
    """``DenseBackbone`` of zoo model ``backbone``: strides from (4, 8, 16, 32, 64) (64: a max-pooled top level, as
    ViTDet's ``LastLevelMaxPool``), the pyramid's ``out_channels`` and ``norm`` ('ln', 'bn', 'gn' or 'none'); the
    other arguments go to ``ViTBackbone``."""
    vit = ViTBackbone(backbone, **vit_kwargs)
    pyramid = SimpleFeaturePyramid(vit.embed_dim, out_channels, strides, norm=norm, in_stride=max(vit.patch_size),
                                   num_inputs=len(vit.out_indices))
    return DenseBackbone(vit, pyramid)
