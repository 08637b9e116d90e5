"""The configuration of dense training (``tools/train_det.py``, ``tools/train_seg.py``): one dataclass that YAML
files and the command line both fill, as ``vitpe.config.TrainConfig`` (command line over YAML over defaults)."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..config import TrainConfig, _argument, _flag, option, read_yaml

__all__ = ['DenseConfig', 'parse_dense_config']


@dataclass
class DenseConfig:
    """Every option of ``vitpe.dense.train.train``; YAML keys are the field names."""
    task: str = option('detection', "'detection' or 'segmentation' (set by the tool)", hidden=True)
    model: str = option('vitpe_micro_patch16_rope_mixed_64', 'vitpe zoo model of the backbone')
    head: Optional[str] = option(None, "detection: maskrcnn (default), fasterrcnn, retinanet; segmentation: "
                                 "upernet (default), semantic_fpn")
    model_kwargs: Dict[str, Any] = option(help='extra backbone arguments (JSON or key=value), e.g. pos_enc_args',
                                          factory=dict, nargs='+')
    window_size: Optional[int] = option(None, 'window attention (ViTDet: 14); none: global attention')
    global_blocks: Optional[List[int]] = option(None, "blocks with global attention (none: ViTDet's, the last of "
                                                "each quarter of the trunk: 2 5 8 11 for depth 12)", nargs='*',
                                                type=int)
    detector_args: Dict[str, Any] = option(help="torchvision detector arguments (JSON or key=value), e.g. "
                                           "rpn_post_nms_top_n_train=300 box_batch_size_per_image=128",
                                           factory=dict, nargs='+')
    backbone_checkpoint: Optional[str] = option(None, 'classification checkpoint of the backbone model')
    channels: int = option(256, 'pyramid width')
    head_channels: Optional[int] = option(None, 'head width (R-CNN box head, mask head / segmentation head)')
    data: str = option('synthetic', "'synthetic' (the built-in scenes, written under <output>/data) or a folder "
                       "(detection: COCO, annotations/instances_<split>.json and <split>/; segmentation: "
                       "images/<split>/ and annotations/<split>/)")
    num_classes: int = option(4, 'object classes, background not counted (the built-in data: 4 kinds)')
    img_size: int = option(128, 'training and evaluation image size (pixels, square)')
    augment: str = option('flip', 'training pipeline: none, flip, resize, rrc, lsj')
    train_samples: int = option(64, 'built-in data: training scenes')
    val_samples: int = option(16, 'built-in data: validation scenes')
    epochs: int = option(10, 'epochs to train')
    batch_size: int = option(8, 'global batch over all processes')
    lr: float = option(3e-4, 'peak learning rate (AdamW)')
    weight_decay: float = option(0.05, 'weight decay')
    warmup_steps: int = option(20, 'linear warm-up updates, then cosine')
    min_lr: float = option(1e-6, 'lowest learning rate of the schedule')
    clip_grad: float = option(1.0, 'clip the gradient norm to this (0: off)')
    workers: int = option(0, 'data loader worker processes')
    seed: int = option(0, 'random seed')
    output: str = option('runs/dense', 'folder for checkpoints, logs and the written data')
    resume: bool = option(False, 'continue from <output>/last.pth when it exists')
    max_steps_per_epoch: Optional[int] = option(None, 'cap on updates per epoch (tests)', hidden=True)
    quiet: bool = option(False, 'no progress bars or per-epoch lines')

    # TrainConfig's: unknown keys and values of the wrong type raise ValueError naming them
    from_dict = classmethod(TrainConfig.from_dict.__func__)
    to_dict = TrainConfig.to_dict


def build_parser(task: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f'Train a vitpe {task} model (torchvision heads).')
    p.add_argument('-c', '--config', default=None,
                   help='YAML file of options (keys as the long options, with _); the command line overrides it')
    hints = typing.get_type_hints(DenseConfig)
    for f in dataclasses.fields(DenseConfig):
        kwargs = _argument(f, hints[f.name])
        if f.name == 'global_blocks':  # a list of ints
            kwargs['type'] = int
        p.add_argument(_flag(f.name), **kwargs)
    return p


def parse_dense_config(argv: Optional[List[str]], task: str) -> DenseConfig:
    """Command line (and the YAML it names) to a ``DenseConfig`` for ``task``."""
    given = vars(build_parser(task).parse_args(argv))
    path = given.pop('config', None)
    values = read_yaml(path) if path else {}
    return DenseConfig.from_dict({**values, **given, 'task': task},
                                 source=f"config {path!r}" if path else 'command line')
