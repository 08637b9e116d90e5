"""Optimisation of a training run: timm's optimizer (with layer-wise learning-rate decay), the per-update
schedule with a linear warm-up, the learning rate scaled to the global batch, mixup / cutmix and the loss."""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2


def peak_lr(cfg) -> float:
    """``lr``, or ``lr_base * batch_size / lr_base_size`` when ``lr_base`` is set (the linear scaling rule of
    Goyal et al. 2017 that DeiT uses with lr_base 5e-4 per 512 images)."""
    return cfg.lr if cfg.lr_base is None else cfg.lr_base * cfg.batch_size / cfg.lr_base_size


def warmup_updates(cfg, steps_per_epoch: int) -> int:
    """Updates of the linear warm-up: ``warmup_epochs`` x updates per epoch when given, else ``warmup_steps``."""
    if cfg.warmup_epochs is not None:
        return int(round(cfg.warmup_epochs * steps_per_epoch))
    return cfg.warmup_steps


def drop_path_kwargs(cfg, model_name: str) -> Dict[str, Any]:
    """Model arguments for stochastic depth: timm's ``drop_path_rate`` (linear in depth), and for
    ``drop_path_mode`` 'constant' (every block at the rate, as DeiT-III's models_v2.py) the vitpe trunk's
    ``drop_path_mode``."""
    if not cfg.drop_path:
        return {}
    if cfg.drop_path_mode == 'linear':
        return {'drop_path_rate': cfg.drop_path}
    if not model_name.startswith('vitpe_'):
        raise ValueError(f"drop_path_mode {cfg.drop_path_mode!r} applies to vitpe models; {model_name} takes "
                         f"timm's linear drop path only (drop_path_mode: linear)")
    return {'drop_path_rate': cfg.drop_path, 'drop_path_mode': cfg.drop_path_mode}


def create_optimizer(model: torch.nn.Module, cfg):
    """timm's optimizer (epsilon ``opt_eps`` where set); with ``layer_decay`` each group carries timm's
    ``lr_scale`` ``layer_decay ** (L + 1 - layer)`` (layers from the model's ``group_matcher``: the stem 0, block i i + 1, the final norm with the last block,
    the head L + 1; as timm's ViT)."""
    eps = {} if cfg.opt_eps is None else {'eps': cfg.opt_eps}  # else the optimizer's own default
    return create_optimizer_v2(model, opt=cfg.opt, lr=peak_lr(cfg), weight_decay=cfg.weight_decay,
                               layer_decay=cfg.layer_decay, **eps)


def scaled_lrs(optimizer) -> List[float]:
    """Each group's peak learning rate: its ``lr`` times its layer-decay ``lr_scale``."""
    return [g['lr'] * g.get('lr_scale', 1.0) for g in optimizer.param_groups]


def build_optimization(run) -> None:
    """Sets ``run.optimizer``, ``scheduler``, ``base_lrs``, ``warmup``, ``mixup`` and ``criterion``."""
    cfg = run.cfg
    run.optimizer = create_optimizer(run.unwrapped, cfg)
    run.base_lrs = scaled_lrs(run.optimizer)  # before the scheduler or a resume touch them
    run.warmup = warmup_updates(cfg, run.steps_per_epoch)
    run.scheduler, _ = create_scheduler_v2(run.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                           warmup_epochs=0, step_on_epochs=False,
                                           updates_per_epoch=run.steps_per_epoch)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        run.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                          num_classes=len(run.classes))
    run.criterion = criterion(cfg, mixed=run.mixup is not None)


def even_batch(run, batch: Optional[Sequence[torch.Tensor]]):
    """The micro-batch as mixup / cutmix can take it: timm's ``Mixup`` pairs sample i with sample n - 1 - i and needs
    an even batch, so one left odd by a skipped unreadable image loses its last sample (counted in
    ``run.mixup_dropped``, warned about); None (no readable sample left) stays None."""
    if batch is None or run.mixup is None or batch[0].shape[0] % 2 == 0:
        return batch
    run.mixup_dropped += 1
    warnings.warn(f"mixup / cutmix need an even batch: dropped one sample of a batch of {batch[0].shape[0]} left odd "
                  f"by an unreadable image ({run.mixup_dropped} dropped so far)")
    return [t[:-1] for t in batch] if batch[0].shape[0] > 1 else None


def criterion(cfg, mixed: bool):
    """Binary cross-entropy (DeiT-III: targets thresholded at 0), soft-target cross-entropy after mixup (which
    smooths the labels itself), or cross-entropy with label smoothing."""
    if cfg.bce_loss:
        return BinaryCrossEntropy(smoothing=0.0 if mixed else cfg.smoothing, target_threshold=cfg.bce_target_thresh)
    if mixed:
        return SoftTargetCrossEntropy()
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


def warm_up(run) -> None:
    """Linear warm-up over ``run.warmup`` updates (each group from its peak lr / warmup), then timm's schedule."""
    if run.num_updates < run.warmup:
        for g, lr in zip(run.optimizer.param_groups, run.base_lrs):
            g['lr'] = lr * (run.num_updates + 1) / run.warmup

