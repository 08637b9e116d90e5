"""Dense data on disk: the built-in synthetic scenes written as COCO (json + images) and as ADE20K-style
image / label-map folders, and readers of both layouts that check what they read.

Classes are the synthetic shape kinds (circle, square, triangle, ring): COCO category ids 1 .. 4, label-map
values 1 .. 4 with 0 for background (``num_classes`` = 4, background not counted, as the builders).

Bad input raises ``DataError`` naming the file and the record: an empty or imageless annotation file, a missing
image file, a box outside its image, a category beyond ``num_classes``, a label map whose size is not its
image's, a label value beyond ``num_classes`` (other than ``ignore_index``)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ..data.synthetic import KINDS, SyntheticShapes, render
from ..errors import DataError
from .transforms import apply_detection, apply_segmentation

__all__ = ['write_coco', 'write_segmentation_folders', 'CocoDetection', 'SegmentationFolder', 'collate_detection']

CATEGORIES = [{'id': i + 1, 'name': k} for i, k in enumerate(KINDS)]


def _scenes(num_images: int, img_size, split: str, seed: int, task: str = 'kind'):
    """(file stem, image uint8 (H, W, 3), visible masks (N, H, W) bool, labels 1 .. 4) of synthetic scenes."""
    data = SyntheticShapes(task, img_size, num_images, split, seed, cache=False)
    for i in range(num_images):
        scene = data.scene(i)
        image, masks = render(scene, data.img_size, masks=True)
        img = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        yield f'{split}_{i:06d}', img, masks.numpy(), [c + 1 for c in scene.categories]


def write_coco(folder: str, num_images: int, img_size=128, split: str = 'train', seed: int = 0) -> str:
    """Synthetic scenes as ``folder/<split>/*.png`` and ``folder/annotations/instances_<split>.json`` (COCO:
    boxes (x, y, w, h) tight around each shape's visible part, masks as RLE); returns the json's path."""
    os.makedirs(os.path.join(folder, split), exist_ok=True)
    os.makedirs(os.path.join(folder, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for image_id, (stem, img, masks, labels) in enumerate(_scenes(num_images, img_size, split, seed), 1):
        Image.fromarray(img).save(os.path.join(folder, split, stem + '.png'))
        images.append({'id': image_id, 'file_name': stem + '.png', 'height': img.shape[0], 'width': img.shape[1]})
        for m, label in zip(masks, labels):
            if not m.any():  # hidden behind later shapes
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            rle['counts'] = rle['counts'].decode()
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id, 'category_id': label,
                                'bbox': bbox, 'area': float(mask_utils.area(rle)), 'iscrowd': 0,
                                'segmentation': rle})
    path = os.path.join(folder, 'annotations', f'instances_{split}.json')
    with open(path, 'w') as f:
        json.dump({'images': images, 'annotations': annotations, 'categories': CATEGORIES}, f)
    return path


def write_segmentation_folders(folder: str, num_images: int, img_size=128, split: str = 'train',
                               seed: int = 0) -> str:
    """Synthetic scenes as ``folder/images/<split>/*.png`` and label maps ``folder/annotations/<split>/*.png``
    (ADE20K's layout; 0 background, 1 .. 4 the kinds); returns ``folder``."""
    for sub in ('images', 'annotations'):
        os.makedirs(os.path.join(folder, sub, split), exist_ok=True)
    for stem, img, masks, labels in _scenes(num_images, img_size, split, seed):
        label_map = np.zeros(img.shape[:2], dtype=np.uint8)
        for m, label in zip(masks, labels):
            label_map[m] = label
        Image.fromarray(img).save(os.path.join(folder, 'images', split, stem + '.png'))
        Image.fromarray(label_map).save(os.path.join(folder, 'annotations', split, stem + '.png'))
    return folder


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: annotation file not found")
    with open(path) as f:
        text = f.read()
    if not text.strip():
        raise DataError(f"{path}: the annotation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data.get('images'):
        raise DataError(f"{path}: the annotation file holds no images (a COCO file has 'images', 'annotations' "
                        f"and 'categories')")
    return data


def _check_box(path: str, ann: Dict[str, Any], image: Dict[str, Any], tolerance: float = 1.0) -> List[float]:
    x, y, w, h = (float(v) for v in ann['bbox'])
    width, height = image['width'], image['height']
    if w <= 0 or h <= 0 or x < -tolerance or y < -tolerance or x + w > width + tolerance \
            or y + h > height + tolerance:
        raise DataError(f"{path}: annotation {ann['id']} (image {image['file_name']}): box (x, y, w, h) = "
                        f"{ann['bbox']} is empty or lies outside the {width} x {height} image")
    return [max(x, 0.), max(y, 0.), min(x + w, width), min(y + h, height)]


class CocoDetection(Dataset):
    """A COCO annotation file and its image folder as torchvision detection samples: (image (3, H, W) float in
    [0, 1], target dict with ``boxes`` (x0, y0, x1, y1), ``labels`` (1 .. num_classes: the categories in id
    order), ``masks`` (N, H, W) uint8 and ``image_id``), through an albumentations ``transform``
    (``vitpe.dense.transforms.pipeline``). Every record is checked when the file is read."""

    def __init__(self, ann_file: str, image_dir: str, num_classes: Optional[int] = None, transform=None,
                 masks: bool = True):
        data = _read_json(ann_file)
        self.ann_file, self.image_dir, self.transform, self.with_masks = ann_file, image_dir, transform, masks
        cats = sorted(c['id'] for c in data.get('categories', []))
        self.num_classes = num_classes if num_classes is not None else len(cats)
        self.label_of = {cid: i + 1 for i, cid in enumerate(cats)}  # category id -> contiguous label
        self.category_of = {v: k for k, v in self.label_of.items()}
        self.images = {im['id']: im for im in data['images']}
        self.ids = [im['id'] for im in data['images']]
        self.anns: Dict[int, List[Dict[str, Any]]] = {i: [] for i in self.ids}
        for im in data['images']:
            if not os.path.isfile(os.path.join(image_dir, im['file_name'])):
                raise DataError(f"{ann_file}: image {im['id']}: file {os.path.join(image_dir, im['file_name'])} "
                                f"not found")
        for ann in data.get('annotations', []):
            self._check(ann)
            self.anns[ann['image_id']].append(ann)

    def _check(self, ann: Dict[str, Any]) -> None:
        image = self.images.get(ann.get('image_id'))
        if image is None:
            raise DataError(f"{self.ann_file}: annotation {ann.get('id')}: image_id {ann.get('image_id')} is not "
                            f"among the file's images")
        label = self.label_of.get(ann.get('category_id'))
        if label is None or label > self.num_classes:
            raise DataError(f"{self.ann_file}: annotation {ann.get('id')} (image {image['file_name']}): "
                            f"category_id {ann.get('category_id')} is not one of the {self.num_classes} classes "
                            f"(categories {sorted(self.label_of)[:self.num_classes]})")
        _check_box(self.ann_file, ann, image)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info, anns = self.images[image_id], self.anns[image_id]
        img = np.array(Image.open(os.path.join(self.image_dir, info['file_name'])).convert('RGB'))
        if img.shape[:2] != (info['height'], info['width']):
            raise DataError(f"{self.ann_file}: image {image_id}: {info['file_name']} is {img.shape[1]} x "
                            f"{img.shape[0]}, the record says {info['width']} x {info['height']}")
        boxes = np.array([_check_box(self.ann_file, a, info) for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([self.label_of[a['category_id']] for a in anns], dtype=np.int64)
        masks = np.stack([self._mask(a, info) for a in anns]) if anns and self.with_masks else \
            np.zeros((0, *img.shape[:2]), dtype=np.uint8)
        if self.transform is not None:
            out = apply_detection(self.transform, img, boxes, labels, masks if self.with_masks else None)
            img, boxes, labels, masks = out['image'], out['boxes'], out['labels'], out.get('masks', masks)
        target = {'boxes': torch.from_numpy(boxes), 'labels': torch.from_numpy(labels),
                  'image_id': torch.tensor(image_id)}
        if self.with_masks:
            target['masks'] = torch.from_numpy(np.ascontiguousarray(masks))
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255, target

    @staticmethod
    def _mask(ann, info) -> np.ndarray:
        seg = ann.get('segmentation')
        if isinstance(seg, list):  # polygons
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, info['height'], info['width']))
        elif isinstance(seg, dict) and isinstance(seg.get('counts'), list):  # uncompressed RLE
            seg = mask_utils.frPyObjects(seg, info['height'], info['width'])
        return mask_utils.decode(seg).astype(np.uint8)


def collate_detection(batch):
    """torchvision detection batches: a list of images and a list of targets."""
    return [b[0] for b in batch], [b[1] for b in batch]


class SegmentationFolder(Dataset):
    """``root/images/<split>/*`` with label maps ``root/annotations/<split>/<stem>.png`` (ADE20K's layout): (image
    (3, H, W) float in [0, 1], labels (H, W) long) through an albumentations ``transform``. Values above
    ``num_classes`` other than ``ignore_index`` raise ``DataError`` (ADE20K's own maps, 0 = 'other', go through
    ``reduce_zero_label`` in mm; here 0 is background)."""

    def __init__(self, root: str, split: str, num_classes: int, transform=None, ignore_index: int = 255):
        self.image_dir = os.path.join(root, 'images', split)
        self.label_dir = os.path.join(root, 'annotations', split)
        if not os.path.isdir(self.image_dir):
            raise DataError(f"{self.image_dir}: image folder not found")
        self.files = sorted(f for f in os.listdir(self.image_dir) if not f.startswith('.'))
        if not self.files:
            raise DataError(f"{self.image_dir}: no images")
        for f in self.files:
            if not os.path.isfile(self._label_path(f)):
                raise DataError(f"{self.image_dir}/{f}: its label map {self._label_path(f)} not found")
        self.num_classes, self.transform, self.ignore_index = num_classes, transform, ignore_index

    def _label_path(self, file: str) -> str:
        return os.path.join(self.label_dir, os.path.splitext(file)[0] + '.png')

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        file = self.files[index]
        img = np.array(Image.open(os.path.join(self.image_dir, file)).convert('RGB'))
        labels = np.array(Image.open(self._label_path(file)))
        if labels.shape != img.shape[:2]:
            raise DataError(f"{self._label_path(file)}: label map {labels.shape[1]} x {labels.shape[0]} but image "
                            f"{file} is {img.shape[1]} x {img.shape[0]}")
        bad = np.unique(labels[(labels > self.num_classes) & (labels != self.ignore_index)])
        if bad.size:
            raise DataError(f"{self._label_path(file)}: label values {bad[:8].tolist()} beyond num_classes="
                            f"{self.num_classes} (ignore_index {self.ignore_index})")
        if self.transform is not None:
            img, labels = apply_segmentation(self.transform, img, labels)
        return (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255,
                torch.from_numpy(np.ascontiguousarray(labels)).long())
