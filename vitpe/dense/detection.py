"""torchvision detectors over a vitpe backbone and simple feature pyramid, built by name.

``num_classes`` counts object classes without background, in every builder: the torchvision model gets
``num_classes + 1`` outputs (0 is background), so targets' labels are 1 .. num_classes."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from .backbone import DenseBackbone, build_backbone

__all__ = ['DETECTORS', 'build_detector']

# name -> (torchvision class, default pyramid strides, anchor size per stride)
DETECTORS = {
    'maskrcnn': (MaskRCNN, (4, 8, 16, 32, 64), 8),  # ViTDet's Mask R-CNN levels; anchors 32 .. 512 (torchvision's)
    'fasterrcnn': (FasterRCNN, (4, 8, 16, 32, 64), 8),
    'retinanet': (RetinaNet, (8, 16, 32, 64), 4),  # P3 .. P6; anchors 32 .. 256 with 3 scales per octave
}


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"invalid num_classes={num_classes!r}; expected the number of object classes (a positive "
                         f"integer, background not counted)")
    return num_classes


def anchor_generator(name: str, strides: Sequence[int]) -> AnchorGenerator:
    """One anchor size per level for the R-CNNs (8 x stride), three per octave for RetinaNet (Lin et al. 2017)."""
    per_stride = DETECTORS[name][2]
    if name == 'retinanet':
        sizes = tuple(tuple(int(per_stride * s * 2 ** (k / 3)) for k in range(3)) for s in strides)
    else:
        sizes = tuple((per_stride * s,) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def build_detector(name: str, backbone: str, num_classes: int, *, strides: Optional[Sequence[int]] = None,
                   out_channels: int = 256, norm: str = 'ln', box_head_size: int = 1024, mask_head_channels: int = 256,
                   backbone_args: Optional[Dict[str, Any]] = None, **detector_args) -> nn.Module:
    """A torchvision ``MaskRCNN``, ``FasterRCNN`` or ``RetinaNet`` (``name``: 'maskrcnn', 'fasterrcnn',
    'retinanet') over the vitpe zoo model ``backbone`` with a simple feature pyramid.

    ``model(images, targets)`` gives the losses in training mode, ``model(images)`` the predictions in eval mode
    (torchvision's contract: images a list of (3, H, W) tensors in [0, 1], targets dicts of ``boxes`` (x0, y0,
    x1, y1 pixels), ``labels`` (1 .. num_classes) and, for Mask R-CNN, ``masks``). ``strides``: the pyramid's
    (default per detector, see ``DETECTORS``); ``backbone_args`` go to ``ViTBackbone`` (window_size,
    global_blocks, checkpoint, img_size, ...); ``box_head_size`` and ``mask_head_channels`` are the widths of the
    R-CNN box head (two FC layers) and mask head (four 3x3 convolutions), torchvision's defaults;
    ``detector_args`` go to the torchvision class (min_size, max_size, box_detections_per_img, ...)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; expected one of {list(DETECTORS)}")
    cls, default_strides, _ = DETECTORS[name]
    num_classes = check_num_classes(num_classes)
    strides = tuple(strides or default_strides)
    dense: DenseBackbone = build_backbone(backbone, strides=strides, out_channels=out_channels, norm=norm,
                                          **(backbone_args or {}))
    detector_args.setdefault('size_divisible', max(strides))  # every level's map a whole number of cells
    if name == 'retinanet':
        return cls(dense, num_classes + 1, anchor_generator=anchor_generator(name, strides), **detector_args)
    levels = [n for n in dense.names if n != 'pool']  # RoIs pool from the strides made from the trunk
    heads = dict(rpn_anchor_generator=anchor_generator(name, strides),
                 box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
                 box_head=TwoMLPHead(out_channels * 7 * 7, box_head_size),
                 box_predictor=FastRCNNPredictor(box_head_size, num_classes + 1))
    if name == 'maskrcnn':
        heads.update(mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
                     mask_head=MaskRCNNHeads(out_channels, (mask_head_channels,) * 4, 1),
                     mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1))
        return cls(dense, None, **heads, **detector_args)  # the predictors hold the classes
    return cls(dense, None, **heads, **detector_args)
