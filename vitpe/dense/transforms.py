"""albumentations pipelines for detection (boxes, labels, instance masks) and segmentation (label maps).

A transform that drops a box (cropped away, or smaller than ``min_area`` after it) drops its label and its mask
with it: each box carries its index through albumentations (a label field), and the masks are selected by the
indices that survive.

Pipelines by name (``size`` the output (H, W) where one is fixed):
- ``flip``: horizontal flip (p = 0.5);
- ``resize``: resize to ``size``;
- ``rrc``: random-resized crop to ``size`` (scale 0.3 .. 1) and flip;
- ``lsj``: ViTDet's large-scale jitter (Ghiasi et al. 2021; detectron2 ``ResizeScale(0.1, 2.0)`` +
  ``FixedSizeCrop``): the longer side resized to ``size``, scaled by a factor in [0.1, 2.0], padded at the bottom
  right to ``size`` (labels: ``ignore_index``) and randomly cropped to it, and flip;
- ``none``: nothing (evaluation).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

__all__ = ['PIPELINES', 'pipeline', 'apply_detection', 'apply_segmentation']

PIPELINES = ('none', 'flip', 'resize', 'rrc', 'lsj')


def _steps(name: str, size: Tuple[int, int], mask_fill: int):
    h, w = size
    if name == 'none':
        return []
    if name == 'flip':
        return [A.HorizontalFlip(p=0.5)]
    if name == 'resize':
        return [A.Resize(h, w)]
    if name == 'rrc':
        return [A.RandomResizedCrop((h, w), scale=(0.3, 1.0)), A.HorizontalFlip(p=0.5)]
    if name == 'lsj':
        return [A.LongestMaxSize(max_size=max(h, w)), A.RandomScale(scale_limit=(0.1 - 1, 2.0 - 1), p=1.0),
                A.PadIfNeeded(h, w, position='top_left', border_mode=cv2.BORDER_CONSTANT, fill=0,
                              fill_mask=mask_fill),
                A.RandomCrop(h, w), A.HorizontalFlip(p=0.5)]
    raise ValueError(f"unknown pipeline {name!r}; expected one of {list(PIPELINES)}")


def pipeline(name: str, size: Optional[Sequence[int]] = None, task: str = 'detection', ignore_index: int = 255,
             min_area: float = 1.0, seed: Optional[int] = None) -> A.Compose:
    """The albumentations ``Compose`` of pipeline ``name`` for ``task`` ('detection': boxes in pixels (x0, y0,
    x1, y1) clipped to the image, dropped below ``min_area`` px; 'segmentation': a label map, padded with
    ``ignore_index``)."""
    if name != 'none' and name != 'flip' and size is None:
        raise ValueError(f"pipeline {name!r} needs an output size")
    size = (int(size), int(size)) if isinstance(size, int) else tuple(size or (0, 0))
    steps = _steps(name, size, ignore_index if task == 'segmentation' else 0)  # instance masks: padded with 0
    if task == 'segmentation':
        return A.Compose(steps, seed=seed)
    if task != 'detection':
        raise ValueError(f"unknown task {task!r}; expected 'detection' or 'segmentation'")
    boxes = A.BboxParams(format='pascal_voc', label_fields=['labels', 'index'], min_area=min_area, clip=True)
    return A.Compose(steps, bbox_params=boxes, seed=seed)


def apply_detection(transform: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                    masks: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """image (H, W, 3) uint8, boxes (N, 4), labels (N,), masks (N, H, W) -> the same keys after ``transform``,
    boxes, labels and masks in step (the masks of dropped boxes dropped)."""
    kw = dict(image=image, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=list(labels),
              index=list(range(len(labels))))
    if masks is not None and len(masks):
        kw['masks'] = list(masks)
    out = transform(**kw)
    keep = [int(i) for i in out['index']]
    result = dict(image=out['image'], boxes=np.asarray(out['bboxes'], dtype=np.float32).reshape(-1, 4),
                  labels=np.asarray(out['labels'], dtype=np.int64).reshape(-1))
    if masks is not None:
        h, w = out['image'].shape[:2]
        kept = [out['masks'][i] for i in keep] if len(masks) else []
        result['masks'] = np.stack(kept).astype(np.uint8) if kept else np.zeros((0, h, w), dtype=np.uint8)
    return result


def apply_segmentation(transform: A.Compose, image: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    out = transform(image=image, mask=mask)
    return out['image'], out['mask']
