"""Dense metrics: COCO box and mask AP with pycocotools' ``COCOeval`` (Lin et al. 2014), and mean IoU from a
confusion matrix (mmseg ``IoUMetric``: classes that never occur in the labels nor the predictions are left out of
the mean)."""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ['coco_results', 'coco_ap', 'ConfusionMatrix']


def coco_results(predictions: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                 category_of: Dict[int, int], masks: bool = True, mask_threshold: float = 0.5) -> List[Dict]:
    """torchvision predictions (boxes x0, y0, x1, y1; labels 1 .. K; scores; masks (N, 1, H, W) probabilities)
    of the images ``image_ids`` as COCO result records (``category_of``: label -> category id)."""
    out = []
    for pred, image_id in zip(predictions, image_ids):
        boxes = pred['boxes'].detach().cpu().numpy().astype(float)
        rles = []
        if masks and 'masks' in pred:
            binary = (pred['masks'][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in binary]
        for i, (box, label, score) in enumerate(zip(boxes, pred['labels'].tolist(), pred['scores'].tolist())):
            rec = {'image_id': int(image_id), 'category_id': category_of[int(label)], 'score': float(score),
                   'bbox': [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
            if rles:
                rec['segmentation'] = dict(rles[i], counts=rles[i]['counts'].decode())
            out.append(rec)
    return out


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def coco_ap(ann_file: str, results: List[Dict], iou_types: Sequence[str] = ('bbox', 'segm'),
            image_ids: Sequence[int] = ()) -> Dict[str, float]:
    """COCO AP, AP50 and AP75 for each of ``iou_types`` ('bbox', 'segm'), e.g. ``{'bbox_AP': .., 'bbox_AP50': ..,
    'segm_AP': ..}``, over ``image_ids`` (default all); no results: every AP 0."""
    gt = _quiet(COCO, ann_file)
    metrics = {}
    for iou_type in iou_types:
        if not results:
            metrics.update({f'{iou_type}_{k}': 0.0 for k in ('AP', 'AP50', 'AP75')})
            continue
        dt = _quiet(gt.loadRes, results)
        ev = COCOeval(gt, dt, iou_type)
        if image_ids:
            ev.params.imgIds = list(image_ids)
        _quiet(ev.evaluate)
        _quiet(ev.accumulate)
        _quiet(ev.summarize)
        stats = [max(float(s), 0.0) for s in ev.stats[:3]]  # -1: no ground truth in a slice
        metrics.update({f'{iou_type}_AP': stats[0], f'{iou_type}_AP50': stats[1], f'{iou_type}_AP75': stats[2]})
    return metrics


class ConfusionMatrix:
    """Accumulates (true, predicted) pixel counts over ``num_classes`` classes (background included), pixels
    labelled ``ignore_index`` skipped; ``iou()`` per class (NaN where the class never occurs), ``miou()`` their
    mean over the classes that occur, ``accuracy()`` the pixel accuracy."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore_index
        t, p = target[keep].long().cpu(), pred[keep].long().cpu()
        self.matrix += torch.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def iou(self) -> torch.Tensor:
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float('nan')))

    def miou(self) -> float:
        iou = self.iou()
        return float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else 0.0

    def accuracy(self) -> float:
        return float(self.matrix.diag().sum() / self.matrix.sum().clamp(min=1))
