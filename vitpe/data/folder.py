"""Real data: any torchvision ImageFolder tree (ImageNet layout: root/[train|val]/class/image), with
corrupt images skipped, warned about and counted instead of crashing an epoch."""
from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset, default_collate
from torchvision import datasets, transforms

from .clips import build_clip_dataset
from .synthetic import SyntheticShapes, TASKS, builtin_dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class RobustImageFolder(datasets.ImageFolder):
    """ImageFolder whose unreadable images yield ``None`` (dropped by ``collate_skip_none``), counted in
    ``num_corrupt``."""

    def __init__(self, root, transform=None):
        if not os.path.isdir(root):
            raise ValueError(f"image folder {root!r} does not exist or is not a directory")
        try:
            super().__init__(root, transform=transform)
        except (FileNotFoundError, RuntimeError) as e:
            raise ValueError(f"image folder {root!r} holds no class folders with images ({e})") from None
        self.num_corrupt = 0

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            img = self.loader(path)
        except Exception as e:  # PIL raises several types for truncated / non-image files
            self.num_corrupt += 1
            warnings.warn(f"skipping unreadable image {path}: {e}")
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def collate_skip_none(batch):
    """default_collate over the samples that could be read (corrupt ones come back as None)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


def folder_transform(img_size: Tuple[int, int], train: bool):
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(img_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    resize = tuple(int(s / 0.875) for s in img_size)
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(img_size), transforms.ToTensor(), norm])


def build_dataset(spec: str, img_size, split: str, num_samples: Optional[int] = None, seed: int = 0) -> Dataset:
    """``synthetic:<task>`` (built-in scenes) or a path to an ImageFolder tree (``<path>/train`` and
    ``<path>/val`` if present, else ``<path>`` itself for both); with a clip size (T, H, W) or ``clips:<task>``,
    clips (``clips.build_clip_dataset``)."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) == 3 or spec.startswith('clips'):
        return build_clip_dataset(spec, size, split, num_samples, seed)
    if spec.startswith('synthetic'):
        return builtin_dataset(spec, TASKS, size, split, num_samples, seed,
                               lambda task, n: SyntheticShapes(task, size, n, split=split, seed=seed))
    sub = os.path.join(spec, 'train' if split == 'train' else 'val')
    root = sub if os.path.isdir(sub) else spec
    ds = RobustImageFolder(root, transform=folder_transform(size, split == 'train'))
    if num_samples:
        ds = torch.utils.data.Subset(ds, range(min(num_samples, len(ds))))
        ds.classes = ds.dataset.classes
    return ds
