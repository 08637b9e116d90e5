"""vitpe's dense backbone and simple feature pyramid in mmdetection 3.3 and mmsegmentation 1.2.

Importing this module registers, in the MODELS registry of mmdet and of mmseg (whichever is installed):

- ``VitpeBackbone``: ``vitpe.dense.ViTBackbone`` as an mm backbone (``init_weights``, ``out_indices``, a tuple of
  stride-16 maps). A classification checkpoint (``checkpoint=``, any scheme, any training size: tables resized)
  is read safely (safetensors or ``torch.load(weights_only=True)``) in ``init_weights``, as mm loads
  pretrained backbones; mm's ``init_cfg=dict(type='Pretrained')`` (a full unpickling load) is refused.
- ``VitpeSimpleFPN``: ``vitpe.dense.SimpleFeaturePyramid`` as a neck (ViTDet's simple pyramid, mmdet's ViTDet
  project's ``SimpleFPN``); a tuple of maps, finest first.
- ``LN2d``: a LayerNorm over channels of NCHW maps (timm's ``LayerNorm2d``), the norm of ViTDet's heads, unless
  one is registered already;

and, in mmengine's root optimizer-constructor registry (seen from both),
- ``VitpeLayerDecayOptimizerConstructor``: layer-wise learning-rate decay over the vitpe trunk (ViTDet,
  ``paramwise_cfg=dict(decay_rate=0.7)``): block i gets ``decay_rate ** (depth - i)``, the stem
  ``decay_rate ** (depth + 1)``, the other modules the base rate (detectron2's ``get_vit_lr_decay_rate``);
  no weight decay on 1-D tensors and the trunk's ``no_weight_decay()``.

The configs in ``configs/mmdet`` and ``configs/mmseg`` import this module (``custom_imports``). Install the mm
stack with ``scripts/install_mm.sh`` (``pip install -e .[mm]`` has the pure-Python parts; mmcv 2.1.0 needs a
build for a new torch). ``import vitpe`` never needs mm."""
from __future__ import annotations

import re
from typing import Optional, Sequence

from torch import nn

INSTALL_HINT = ("the OpenMMLab stack (mmcv 2.1.0, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2) is not "
                "installed: run scripts/install_mm.sh (it builds mmcv 2.1.0 for the installed torch)")

try:
    from mmengine.model import BaseModule
    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmengine.registry import MODELS as ROOT_MODELS, OPTIM_WRAPPER_CONSTRUCTORS
except ImportError as e:  # pragma: no cover - exercised where mm is missing
    raise ImportError(f"vitpe.integrations.mm: {INSTALL_HINT} ({e})") from e

from timm.layers import LayerNorm2d

from ..dense.backbone import ViTBackbone
from ..dense.pyramid import SimpleFeaturePyramid

__all__ = ['VitpeBackbone', 'VitpeSimpleFPN', 'VitpeLayerDecayOptimizerConstructor', 'registries']


class VitpeBackbone(BaseModule):
    """An mm backbone: zoo model ``model`` with window attention (``window_size``, ``global_blocks``: ViTDet's
    when None), returning a tuple of the stride-16 maps of blocks ``out_indices``. ``checkpoint``: a vitpe
    classification checkpoint loaded in ``init_weights``; ``model_kwargs``: other zoo-model arguments (e.g.
    ``pos_enc_args``). The other arguments are ``vitpe.dense.ViTBackbone``'s."""

    def __init__(self, model: str, window_size: Optional[int] = 14, global_blocks: Optional[Sequence[int]] = None,
                 out_indices: Sequence[int] = (-1,), img_size=None, checkpoint: Optional[str] = None,
                 norm: bool = False, drop_path_rate: float = 0.1, model_kwargs: Optional[dict] = None,
                 init_cfg=None):
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained' or \
                isinstance(init_cfg, (list, tuple)) and any(c.get('type') == 'Pretrained' for c in init_cfg):
            raise ValueError("VitpeBackbone: init_cfg=dict(type='Pretrained') unpickles the file; give the "
                             "classification checkpoint as checkpoint=... (read with weights_only / safetensors)")
        super().__init__(init_cfg=init_cfg)
        self.vit = ViTBackbone(model, window_size=window_size, global_blocks=global_blocks,
                               out_indices=tuple(out_indices), img_size=img_size, norm=norm,
                               drop_path_rate=drop_path_rate, **(model_kwargs or {}))
        self.out_indices = self.vit.out_indices
        self.embed_dim = self.vit.embed_dim
        self.checkpoint = checkpoint

    def init_weights(self) -> None:
        super().init_weights()
        if self.checkpoint is not None:
            self.vit.load_classification_checkpoint(self.checkpoint)

    def forward(self, x):
        return tuple(self.vit(x))


class VitpeSimpleFPN(BaseModule):
    """An mm neck: the tuple of backbone maps (one, or one per level) -> a tuple of maps at ``strides`` (finest
    first; 64 max-pools the stride-32 level), each ``out_channels`` wide; ``norm`` 'ln' (ViTDet), 'bn', 'gn' or
    'none'."""

    def __init__(self, in_channels: int, out_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32, 64),
                 norm: str = 'ln', in_stride: int = 16, num_inputs: int = 1, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.pyramid = SimpleFeaturePyramid(in_channels, out_channels, tuple(strides), norm=norm,
                                            in_stride=in_stride, num_inputs=num_inputs)

    def forward(self, inputs):
        return tuple(self.pyramid(list(inputs)))


def _vitpe_trunks(module: nn.Module):
    """The trunk of every vitpe backbone inside ``module``."""
    return [m.vit.trunk for m in module.modules() if isinstance(m, VitpeBackbone)]


def layer_id(name: str, trunk: nn.Module) -> int:
    """ViTDet's layer of a trunk parameter (detectron2 ``get_vit_lr_decay_rate``): 0 for the stem (patch
    embedding, class token, position tables), i + 1 for block i, depth + 1 for the rest (the final norm)."""
    block = re.match(r'blocks\.(\d+)\.', name)
    if block:
        return int(block.group(1)) + 1
    return 0 if re.match(trunk.group_matcher()['stem'], name) else len(trunk.blocks) + 1


class VitpeLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise learning-rate decay over vitpe trunks (``paramwise_cfg=dict(decay_rate=...)``): a trunk
    parameter of layer l (``layer_id``) gets ``lr * decay_rate ** (depth + 1 - l)``, every other parameter
    ``lr``; no weight decay on 1-D tensors (norms, biases) and the trunk's ``no_weight_decay()`` (class token,
    position tables), as mmdet's ViTDet project."""

    def add_params(self, params, module: nn.Module, **kwargs) -> None:
        unknown = set(self.paramwise_cfg) - {'decay_rate'}
        if unknown:
            raise ValueError(f"VitpeLayerDecayOptimizerConstructor: paramwise_cfg takes decay_rate only, got "
                             f"{sorted(unknown)}")
        decay_rate = float(self.paramwise_cfg.get('decay_rate', 1.0))
        wd = self.base_wd or 0.0
        groups, seen = {}, set()

        def add(p, scale, no_decay):
            key = (scale, no_decay)
            if key not in groups:
                groups[key] = {'params': [], 'lr': self.base_lr * scale, 'weight_decay': 0.0 if no_decay else wd}
            groups[key]['params'].append(p)
            seen.add(id(p))
        for trunk in _vitpe_trunks(module):
            skip = trunk.no_weight_decay()
            for name, p in trunk.named_parameters():
                if p.requires_grad:
                    add(p, decay_rate ** (len(trunk.blocks) + 1 - layer_id(name, trunk)), p.ndim <= 1 or name in skip)
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                add(p, 1.0, p.ndim <= 1)
        params.extend(groups.values())


def registries():
    """The MODELS registries of the installed mm codebases (mmdet, mmseg)."""
    found = []
    for name in ('mmdet', 'mmseg'):
        try:
            found.append(__import__(f'{name}.registry', fromlist=['MODELS']).MODELS)
        except ImportError:
            pass
    return found


def _register() -> None:
    for registry in registries():
        for cls in (VitpeBackbone, VitpeSimpleFPN):
            if registry.get(cls.__name__) is None:
                registry.register_module(module=cls)
    if ROOT_MODELS.get('LN2d') is None:
        ROOT_MODELS.register_module(name='LN2d', module=LayerNorm2d)
    if OPTIM_WRAPPER_CONSTRUCTORS.get(VitpeLayerDecayOptimizerConstructor.__name__) is None:
        OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=VitpeLayerDecayOptimizerConstructor)


_register()
