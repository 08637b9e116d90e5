"""Folder training and evaluation: images with timm's data pipeline, clips (``clips.clip_folder``) split alike.

* Training transforms: ``timm.data.create_transform(is_training=True)`` with timm's option names (``--aa``,
  ``--color-jitter``, ``--reprob``, ``--scale``, ``--ratio``, ``--hflip``, ``--train-interpolation``).
  DeiT-III's 3-Augment is timm's ``--aa 3a``: one of grayscale, solarization (threshold 128) or a Gaussian blur of
  radius U(0.1, 2) per image, then the colour jitter (Touvron et al. 2022, Sec. 3; their ``augment.py``).
  RandAugment over timm's ``3a`` operation set (``--aa rand-m9-n1-t3a``) only approximates it (each op applied with
  probability 0.5, strengths set by the magnitude).
* Evaluation transforms: two protocols at any size ``s`` (``EVAL_PROTOCOLS``):
  ``crop`` resizes the shorter side to ``s / crop_pct`` and takes the centre ``s x s`` crop (DeiT, timm);
  ``resize`` resizes the whole image to ``s x s`` (aspect not kept, nothing cut off).
* Validation data: ``<root>/val``; a folder without one is refused unless ``val_fraction`` holds out a part of
  each class, drawn with ``split_seed`` (never the training images or clips).
* Samplers: ``DistributedSampler``, or timm's ``RepeatAugSampler`` for repeated augmentation (``aug_repeats``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from .clips import data_size
from .synthetic import builtin_kind
from .folder import build_dataset, collate_skip_none, image_folder, random_subset

EVAL_PROTOCOLS = {
    'crop': 'resize the shorter side to size / crop_pct, then take the centre size x size crop (DeiT, timm)',
    'resize': 'resize the whole image to size x size (aspect ratio not kept, nothing cut off)',
}
# TrainConfig fields that only mean something for folders: all of them for image folders, the split ones
# (SPLIT_OPTIONS) for folders of clips too; the built-in data is rendered, not augmented, and has its own splits
SPLIT_OPTIONS = ('val_fraction', 'split_seed', 'classes')
FOLDER_OPTIONS = ('aa', 'color_jitter', 'scale', 'ratio', 'hflip', 'vflip', 'reprob', 'remode', 'recount',
                  'aug_repeats', 'train_interpolation', 'interpolation', 'crop_pct') + SPLIT_OPTIONS


def check_protocol(protocol: str) -> None:
    """An unknown evaluation protocol raises ValueError naming the known ones."""
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {list(EVAL_PROTOCOLS)}")


def model_data_config(model_name: Optional[str]) -> Dict[str, Any]:
    """The model's evaluation defaults from its timm pretrained config: mean, std, crop_pct, interpolation."""
    cfg = timm.models.get_pretrained_cfg(model_name) if model_name else None
    out = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875, interpolation='bilinear')
    if cfg is not None:
        out.update(mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct or out['crop_pct'],
                   interpolation=cfg.interpolation or out['interpolation'])
    return out


def eval_transform(size: int, crop_pct: float = 0.875, interpolation: str = 'bicubic', protocol: str = 'crop',
                   mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
    """The evaluation transform at ``size`` under ``protocol`` (``EVAL_PROTOCOLS``), built by timm."""
    check_protocol(protocol)
    if protocol == 'resize':  # timm's 'squash' at crop_pct 1: both sides to size, the centre crop is all of it
        return create_transform(size, is_training=False, crop_pct=1.0, crop_mode='squash',
                                 interpolation=interpolation, mean=mean, std=std)
    return create_transform(size, is_training=False, crop_pct=crop_pct, crop_mode='center',
                            interpolation=interpolation, mean=mean, std=std)


def train_transform(cfg, size: int, data_config: Dict[str, Any]):
    """timm's training transform with the config's augmentation options."""
    return create_transform(
        size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, vflip=cfg.vflip,
        color_jitter=cfg.color_jitter or None, auto_augment=cfg.aa, interpolation=cfg.train_interpolation,
        mean=data_config['mean'], std=data_config['std'], re_prob=cfg.reprob, re_mode=cfg.remode,
        re_count=cfg.recount)


def eval_options(cfg, model_name: Optional[str]) -> Dict[str, Any]:
    """crop_pct, interpolation, mean and std of evaluation: the config's where set, else the model's."""
    out = model_data_config(model_name)
    if cfg.crop_pct is not None:
        out['crop_pct'] = cfg.crop_pct
    if cfg.interpolation is not None:
        out['interpolation'] = cfg.interpolation
    return out


def holdout_split(targets: Sequence[int], fraction: float, seed: int) -> tuple:
    """(train indices, held-out indices): ``fraction`` of each class (at least one image of any class with two
    or more), drawn with ``seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {fraction}")
    g = torch.Generator().manual_seed(seed)
    by_class: Dict[int, List[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, held = [], []
    for c in sorted(by_class):
        idx = [by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=g).tolist()]
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        held += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(held)


def folder_split(root: str, split: str, transform=None, val_fraction: float = 0.0, split_seed: int = 0,
                 classes: Optional[Sequence[str]] = None, *, open_folder=None) -> Dataset:
    """The ``split`` ('train' or 'val') of a folder tree: ``root/train`` and ``root/val`` when they exist; a folder
    without ``val/`` needs ``val_fraction`` (a held-out part of each class, seed ``split_seed``); one with ``val/``
    but no ``train/`` is refused for training (its val/ would be read as a class). ``open_folder(path, classes)``
    reads one tree (a dataset with ``classes`` and ``targets``): default an ImageFolder with ``transform``;
    folders of clips pass ``clips.clip_folder``."""
    if open_folder is None:
        open_folder = image_folder(transform)
    if not os.path.isdir(root):
        raise ValueError(f"folder {root!r} does not exist or is not a directory")
    train_dir = os.path.join(root, 'train') if os.path.isdir(os.path.join(root, 'train')) else root
    val_dir = os.path.join(root, 'val')
    if os.path.isdir(val_dir):
        if split == 'train' and train_dir == root:  # the class folders would include val/: trained on
            raise ValueError(f"{root!r} has a val/ folder but no train/ folder: put the training class folders "
                             f"in {os.path.join(root, 'train')}/ (or remove val/ and use --val-fraction)")
        if val_fraction:
            raise ValueError(f"{root!r} has a val/ folder; --val-fraction {val_fraction} would hold out a second "
                             f"validation set (leave it at 0)")
        return open_folder(train_dir if split == 'train' else val_dir, classes)
    ds = open_folder(train_dir, classes)
    if not val_fraction:
        raise ValueError(f"{root!r} has no val/ folder: validating on the training data would measure nothing. "
                         f"Add {val_dir}/<class>/..., or hold out a part of each class with --val-fraction 0.1 "
                         f"(drawn with --split-seed)")
    train, held = holdout_split(ds.targets, val_fraction, split_seed)
    return _subset(ds, train if split == 'train' else held)


def _subset(ds: Dataset, indices: Sequence[int]) -> Subset:
    sub = Subset(ds, list(indices))
    sub.classes = ds.classes
    return sub


def make_sampler(dataset: Dataset, cfg, rank: int, world: int):
    """timm's RepeatAugSampler with ``aug_repeats`` > 0 (each image ``aug_repeats`` times per epoch, spread over
    the processes, each copy augmented anew; an epoch is len(dataset) samples), else a DistributedSampler."""
    if cfg.aug_repeats:
        return RepeatAugSampler(dataset, num_replicas=world, rank=rank, shuffle=True, num_repeats=cfg.aug_repeats)
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)


def check_folder_options(cfg) -> None:
    """Image-folder options where they would do nothing raise ValueError: all of them for the built-in scenes and
    clips, the augmentation and crop ones for folders of clips (resized whole, not augmented)."""
    if builtin_kind(cfg.data):
        names, why = FOLDER_OPTIONS, (f"the built-in data ({cfg.data}) is rendered, not augmented (its labels depend "
                                      f"on position and time: a flip would change them), and has its own classes "
                                      f"and train / val / test splits")
    elif cfg.num_frames:
        names, why = [k for k in FOLDER_OPTIONS if k not in SPLIT_OPTIONS], \
            "folders of clips are resized whole, not augmented or cropped"
    else:
        return
    defaults = type(cfg)()
    given = [k for k in names if getattr(cfg, k) != getattr(defaults, k)]
    if given:
        raise ValueError(f"{given} apply to image folders; {why}")


def build_loaders(cfg, rank: int, world: int, model_name: Optional[str]) -> Dict[str, Any]:
    """Datasets, samplers and loaders: each process loads batch_size / (world * grad_accum_steps) samples per
    step; ``steps_per_epoch`` counts updates."""
    per_step = world * cfg.grad_accum_steps
    if cfg.batch_size % per_step:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes x "
                         f"{cfg.grad_accum_steps} accumulation steps")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and (cfg.batch_size // per_step) % 2:
        raise ValueError(f"mixup / cutmix need an even batch per process and step: --batch-size {cfg.batch_size} / "
                         f"({world} processes x {cfg.grad_accum_steps} accumulation steps) = "
                         f"{cfg.batch_size // per_step}")
    check_folder_options(cfg)
    split = dict(val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, classes=cfg.classes)
    if builtin_kind(cfg.data):  # built-in scenes or clips: their own splits
        train_set = build_dataset(cfg.data, data_size(cfg), 'train', cfg.train_samples, seed=cfg.seed)
        val_set = build_dataset(cfg.data, data_size(cfg), 'val', cfg.val_samples, seed=cfg.seed)
    elif cfg.num_frames:  # folders of clips: split as image folders are, the same clips validate every --seed
        train_set = build_dataset(cfg.data, data_size(cfg), 'train', cfg.train_samples, seed=cfg.seed, **split)
        val_set = build_dataset(cfg.data, data_size(cfg), 'val', cfg.val_samples, seed=cfg.split_seed, **split)
    else:
        options = eval_options(cfg, model_name)
        train_set = folder_split(cfg.data, 'train', train_transform(cfg, cfg.img_size, options), **split)
        val_set = folder_split(cfg.data, 'val', eval_transform(cfg.img_size, options['crop_pct'],
                                                               options['interpolation'], 'crop', options['mean'],
                                                               options['std']), **split)
        train_set = random_subset(train_set, cfg.train_samples, cfg.seed)
        val_set = random_subset(val_set, cfg.val_samples, cfg.split_seed)  # the same images for every --seed
    micro = cfg.batch_size // per_step
    sampler = make_sampler(train_set, cfg, rank, world)
    train_loader = DataLoader(train_set, batch_size=micro, sampler=sampler, drop_last=True, num_workers=cfg.workers,
                              collate_fn=collate_skip_none, pin_memory=torch.cuda.is_available())
    val_sampler = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    val_loader = DataLoader(val_set, batch_size=micro, sampler=val_sampler, num_workers=cfg.workers,
                            collate_fn=collate_skip_none)
    steps = len(train_loader) // cfg.grad_accum_steps
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"the training set ({len(train_set)} samples) is smaller than one global batch "
                         f"({cfg.batch_size})")
    return dict(classes=list(train_set.classes), train_loader=train_loader, val_loader=val_loader,
                sampler=sampler, steps_per_epoch=steps)


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def eval_spec(ckpt: Dict[str, Any], protocol: str = 'crop', data: Optional[str] = None) -> tuple:
    """How a checkpoint is evaluated on a folder (of clips: only its classes and split apply), as a hashable tuple
    for ``eval_dataset``: the protocol, its training config's crop_pct and interpolation (else its model's), its
    classes, and where the images come from:
    the training data's validation split (its val/, or the part held out with its val_fraction and split_seed) when
    ``data`` is None or that same folder; else ``data``'s val/, or all of it. Its training folder's train/ raises
    ValueError (those images were trained on)."""
    check_protocol(protocol)
    config = ckpt.get('config') or {}
    model = model_data_config(ckpt.get('model_name'))
    trained_on = ckpt.get('data') or ''
    if data is not None and trained_on and _same_folder(data, os.path.join(trained_on, 'train')):
        raise ValueError(f"{data!r} is the training images of this checkpoint; give --data {trained_on!r} (its "
                         f"validation split) or another folder")
    explicit = data is not None and not (trained_on and _same_folder(data, trained_on))
    split = ('test', 0.0, 0) if explicit else ('val', config.get('val_fraction', 0.0), config.get('split_seed', 0))
    classes = tuple(ckpt['classes']) if ckpt.get('classes') else None
    return (protocol, config.get('crop_pct') or model['crop_pct'], config.get('interpolation') or model['interpolation'],
            tuple(model['mean']), tuple(model['std']), classes) + split


def eval_dataset(spec: str, size, samples: Optional[int], how: tuple) -> Dataset:
    """The evaluation images of ``spec`` at ``size`` as ``eval_spec`` describes (built-in scenes and clips: the
    test split). With a clip size (T, H, W), clips: resized whole (no protocol, crop or transform applies)."""
    if builtin_kind(spec):
        return build_dataset(spec, size, 'test', samples)
    protocol, crop_pct, interpolation, mean, std, classes, split, val_fraction, split_seed = how
    options = dict(classes=classes) if split == 'test' else dict(classes=classes, val_fraction=val_fraction,
                                                                  split_seed=split_seed)
    if isinstance(size, (tuple, list)) and len(size) == 3:
        return build_dataset(spec, tuple(size), split, samples, **options)
    transform = eval_transform(size, crop_pct, interpolation, protocol, mean, std)
    return build_dataset(spec, size, split, samples, transform=transform, **options)
