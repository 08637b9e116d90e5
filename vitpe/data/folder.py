"""Real data: any torchvision ImageFolder tree (ImageNet layout: root/[train|val]/class/image), with
corrupt images skipped, warned about and counted instead of crashing an epoch; ``build_dataset`` is the one entry
for every data spec: built-in scenes and clips, folders of images, folders of clips (``clips.clip_folder``)."""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset, default_collate
from timm.data import create_transform
from torchvision import datasets

from .clips import build_clip_dataset, clip_folder
from .synthetic import SyntheticShapes, TASKS, builtin_dataset, builtin_kind



class RobustImageFolder(datasets.ImageFolder):
    """ImageFolder whose unreadable images yield ``None`` (dropped by ``collate_skip_none``), counted in
    ``num_corrupt``."""

    def __init__(self, root, transform=None, classes: Optional[Sequence[str]] = None):
        if not os.path.isdir(root):
            raise ValueError(f"image folder {root!r} does not exist or is not a directory")
        self.subset = list(classes) if classes else None
        try:
            super().__init__(root, transform=transform)
        except (FileNotFoundError, RuntimeError) as e:
            raise ValueError(f"image folder {root!r} holds no class folders with images ({e})") from None
        self.num_corrupt = 0

    def find_classes(self, directory):
        """All class folders, or the ``classes`` asked for (in that order; a missing one raises ValueError)."""
        found, _ = super().find_classes(directory)
        if self.subset is None:
            return found, {c: i for i, c in enumerate(found)}
        missing = [c for c in self.subset if c not in found]
        if missing:
            raise ValueError(f"classes {missing} are not folders of {directory!r}")
        return self.subset, {c: i for i, c in enumerate(self.subset)}

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


def build_dataset(spec: str, img_size, split: str, num_samples: Optional[int] = None, seed: int = 0, *,
                  transform=None, **split_options) -> Dataset:
    """``synthetic:<task>`` (built-in scenes), ``clips:<task>`` (built-in clips) or a path to a folder tree: of
    images (ImageFolder) or, with a clip size (T, H, W), of clips (``clips.clip_folder``). Folders: ``split``
    'train' or 'val' as ``pipeline.folder_split`` says (``<path>/train`` and ``<path>/val``; a folder without
    ``val/`` needs ``val_fraction``); 'test' is an evaluation folder: ``<path>/val`` if present, else all of
    ``<path>``. ``transform`` (images): default timm's training transform for 'train', else the evaluation one
    (crop_pct 0.875); ``num_samples``: a random subset (seed ``seed``) of a folder."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    kind = builtin_kind(spec)
    if kind == 'clips' or (len(size) == 3 and kind == 'synthetic'):
        return build_clip_dataset(spec, size, split, num_samples, seed)  # built-in clips, or the error it names
    if kind == 'synthetic':
        return builtin_dataset(spec, TASKS, size, split, num_samples, seed,
                               lambda task, n: SyntheticShapes(task, size, n, split=split, seed=seed))
    from .pipeline import eval_transform, folder_split
    if len(size) == 3:
        def open_folder(root, classes):
            return clip_folder(root, size, classes)
    else:
        if transform is None:
            transform = create_transform(size, is_training=True) if split == 'train' else eval_transform(size)
        open_folder = image_folder(transform)
    if split == 'test':
        val = os.path.join(spec, 'val')
        ds = open_folder(val if os.path.isdir(val) else spec, split_options.get('classes'))
    else:
        ds = folder_split(spec, split, open_folder=open_folder, **split_options)
    return random_subset(ds, num_samples, seed)


def image_folder(transform):
    """``open_folder`` for ``pipeline.folder_split``: (path, classes) -> an ImageFolder with ``transform``."""
    def open_folder(root: str, classes: Optional[Sequence[str]] = None) -> RobustImageFolder:
        return RobustImageFolder(root, transform, classes=classes)
    return open_folder


def random_subset(ds: Dataset, n: Optional[int], seed: int = 0) -> Dataset:
    """``n`` samples of ``ds`` drawn with ``seed`` (in index order; all of it when ``n`` is None or too large)."""
    if not n or n >= len(ds):
        return ds
    keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    sub = torch.utils.data.Subset(ds, sorted(keep.tolist()))
    sub.classes = ds.classes
    return sub
