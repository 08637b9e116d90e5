"""Training and fine-tuning of any vitpe (or timm) model by name: ``train(TrainConfig(...))``.

One process or several (``torchrun --nproc_per_node=N``: DistributedDataParallel, gloo on CPU,
nccl on GPU; ``batch_size`` is the global batch). timm's optimizer and scheduler factories, timm's
mixup / cutmix and model EMA, bf16 autocast as options. Every epoch: a progress bar, a row in
``log.csv`` and ``log.jsonl``, and an atomic checkpoint (``last.pth``, ``best.pth`` and the best weights as
``model.safetensors``; ``vitpe.checkpoint``)
holding the model name and arguments, the training resolution, the epoch and every RNG state, so that
``resume`` continues after a kill and gives the same result as an uninterrupted run.
``tools/train.py`` is the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import timm
from timm.data import Mixup
from timm.utils import ModelEmaV3

from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import (create_model, load_checkpoint, pretrained_file, read_weights_file, rng_state,
                         save_checkpoints, set_rng_state)
from .config import TrainConfig, parse_config
from .data.pipeline import build_loaders
from .data import data_size, with_frames
from .errors import CheckpointError, TrainingError, exit_code
from .eval.loop import evaluate
from .models.inflate import inflation
from .optim import build_optimization, drop_path_kwargs, even_batch, warm_up
from .runlog import Logger

__all__ = ['Callback', 'TrainConfig', 'TrainingError', 'CheckpointError', 'train', 'CHECKPOINT_FORMAT',
           'create_model', 'load_checkpoint']


class Callback:
    """Hooks into ``train``; override what you need and pass instances as ``train(cfg, callbacks=[...])``.
    They run in every process (under torchrun, once per rank)."""

    def on_loss(self, loss: torch.Tensor, update: int) -> torch.Tensor:
        """Each step's loss, before the check for a finite loss and the backward pass; ``update`` is the
        number (from 1) of the optimizer update this step makes. Return the loss to use."""
        return loss

    def on_epoch_end(self, epoch: int, row: Dict[str, Any]) -> None:
        """After epoch ``epoch`` (from 1) is validated, checkpointed and logged (``row``: its log row)."""


@dataclass
class Run:
    """Everything one training run holds between epochs."""
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    model_name: str
    model_kwargs: Dict[str, Any]
    classes: List[str]
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: Any  # DistributedSampler or timm's RepeatAugSampler
    steps_per_epoch: int
    model: torch.nn.Module = None  # DDP-wrapped with several processes
    unwrapped: torch.nn.Module = None
    warmup: int = 0
    ema: Optional[ModelEmaV3] = None
    optimizer: Any = None
    scheduler: Any = None
    base_lrs: Sequence[float] = ()
    mixup: Optional[Mixup] = None
    criterion: Any = None
    logger: Optional[Logger] = None
    start_epoch: int = 0
    best_acc: float = -1.0
    num_updates: int = 0
    mixup_dropped: int = 0  # samples dropped to keep mixup's batches even (optim.even_batch)


# ---------------------------------------------------------------------------------------------- set-up
def setup_distributed():
    """(rank, world_size, device, created) from torchrun's environment, or a single process;
    ``created``: this call started the process group (and ``train`` ends it)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0'))) if torch.cuda.is_available() \
        else torch.device('cpu')
    created = world > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    return rank, world, device, created


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def load_sources(cfg: TrainConfig):
    """(checkpoint to resume, vitpe checkpoint to start from, foreign weights file to start from):
    ``resume='auto'`` is <output>/last.pth if it exists; an ``initial_checkpoint`` that is not a vitpe checkpoint
    is read as weights (timm's, the authors' or a plain state dict), as ``--pretrained-path``."""
    resume = None
    if cfg.resume:
        path = os.path.join(cfg.output, 'last.pth') if cfg.resume == 'auto' else cfg.resume
        if cfg.resume != 'auto' or os.path.exists(path):
            resume = load_checkpoint(path)
    initial, weights = None, None
    if cfg.initial_checkpoint:
        try:
            initial = load_checkpoint(cfg.initial_checkpoint)
        except CheckpointError as e:
            if not os.path.isfile(cfg.initial_checkpoint):
                raise
            if not cfg.model:
                raise CheckpointError(f"{e}. Read as weights instead, it would not name its model: give "
                                      f"--model") from None
            weights = cfg.initial_checkpoint  # read as weights (create_pretrained names what is wrong with it)
    elif (cfg.pretrained or cfg.pretrained_path) and resume is None:  # a resume has the weights
        weights = pretrained_file(cfg.model, cfg.pretrained_path)
    return resume, initial, weights


def create_pretrained(run: Run, weights: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    """The model with weights from a foreign file, through timm (safe loading; a vitpe model converts timm's or
    the authors' checkpoints to its scheme, ``vitpe.models.convert``)."""
    kwargs = dict(kwargs)
    kwargs.setdefault('img_size', run.cfg.img_size)
    read_weights_file(weights, header_only=True)  # a clear CheckpointError for a file that is not weights
    try:
        return timm.create_model(run.model_name, pretrained=True, pretrained_cfg_overlay=dict(file=weights),
                                 num_classes=len(run.classes), **kwargs)
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"could not start {run.model_name} from {weights!r}: {e}") from None


def build_model(run: Run, initial: Optional[Dict[str, Any]], weights: Optional[str] = None) -> None:
    """The model (weights from ``initial`` or the file ``weights`` if given, a new head for another number of
    classes), with drop path for training, its EMA, and the DDP wrapper for several processes."""
    kwargs = dict(run.model_kwargs, **drop_path_kwargs(run.cfg, run.model_name))
    with inflation(run.cfg.inflation):  # how an image checkpoint's patch kernel enters a video model
        model = load_starting_weights(run, initial, weights, kwargs)
    run.ema = ModelEmaV3(model, decay=run.cfg.model_ema_decay) if run.cfg.model_ema else None
    if run.world > 1:
        model = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    run.model = model
    run.unwrapped = unwrap(model)


def load_starting_weights(run: Run, initial: Optional[Dict[str, Any]], weights: Optional[str],
                          kwargs: Dict[str, Any]) -> torch.nn.Module:
    """The model, from ``weights`` (a foreign file), ``initial`` (a vitpe checkpoint) or new."""
    num_classes = len(run.classes)
    if weights is not None:
        model = create_pretrained(run, weights, kwargs).to(run.device)
    else:
        model = create_model(run.model_name, num_classes, run.cfg.img_size, kwargs).to(run.device)
    if run.cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if initial is not None:
        state = initial['model']
        if initial.get('num_classes') != num_classes:  # a new task: keep everything but the head
            state = {k: v for k, v in state.items() if not k.startswith('head.')}
            missing = model.load_state_dict(state, strict=False).missing_keys
            if any(not k.startswith('head.') for k in missing):
                raise CheckpointError(f"--initial-checkpoint is missing {missing}")
        else:
            model.load_state_dict(state)  # the scheme's pre-hook resizes tables to img_size
    return model


def restore(run: Run, ckpt: Dict[str, Any]) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA, counters and this rank's RNG states."""
    unwrap(run.model).load_state_dict(ckpt['model'])
    run.optimizer.load_state_dict(ckpt['optimizer'])
    run.scheduler.load_state_dict(ckpt['scheduler'])
    if run.ema is not None and ckpt.get('ema') is not None:
        run.ema.load_state_dict(ckpt['ema'])
    run.start_epoch, run.best_acc, run.num_updates = ckpt['epoch'] + 1, ckpt['best_acc'], ckpt['num_updates']
    set_rng_state(ckpt['rng'][run.rank] if run.rank < len(ckpt['rng']) else ckpt['rng'][0])


def prepare(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> Run:
    """A run ready for its first (or, resuming, its next) epoch."""
    if not (cfg.model or cfg.initial_checkpoint or cfg.resume):
        raise ValueError("TrainConfig needs a model (or initial_checkpoint / resume, which name the model)")
    os.makedirs(cfg.output, exist_ok=True)
    resume, initial, weights = load_sources(cfg)
    source = resume or initial
    if resume is not None:  # a resumed run goes on at its own image size and clip length
        frames = (resume.get('model_kwargs') or {}).get('num_frames')
        cfg = cfg.replace(img_size=resume['img_size'], num_frames=frames or cfg.num_frames)
    model_kwargs = dict(source['model_kwargs']) if source and not cfg.model_kwargs else dict(cfg.model_kwargs)
    model_name = cfg.model or source['model_name']
    cfg = with_frames(cfg, model_name, model_kwargs)  # video: clips of the model's frames
    seed_everything(cfg.seed)
    run = Run(cfg, rank, world, device, model_name=model_name, model_kwargs=model_kwargs,
              **build_loaders(cfg, rank, world, model_name))
    build_model(run, initial if resume is None else None, weights if resume is None else None)
    if world > 1:  # the same weights everywhere (DDP broadcasts them), another augmentation stream per process
        seed_everything(cfg.seed + rank)
    build_optimization(run)
    if resume is not None:
        restore(run, resume)
    if rank == 0:
        run.logger = Logger(cfg.output, resume=resume is not None)
        if resume is not None:
            run.logger.truncate(resume['epoch'] + 1)  # rows are numbered from 1
    return run


# ---------------------------------------------------------------------------------------------- epochs
def micro_step(run: Run, batch, weight: float, sync: bool, epoch: int, step: int,
               callbacks: Sequence[Callback]) -> float:
    """Forward and backward of one micro-batch, its loss scaled by ``weight`` (its share of the update's samples);
    ``sync``: DDP all-reduces the gradients in this backward (the last micro-batch of an update)."""
    x, y = batch[0].to(run.device), batch[1].to(run.device)
    if run.cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if run.mixup is not None:
        x, y = run.mixup(x, y)
    no_sync = run.model.no_sync if run.world > 1 and not sync else contextlib.nullcontext
    with no_sync():
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.cfg.amp):
            loss = run.criterion(run.model(x), y)
        for cb in callbacks:
            loss = cb.on_loss(loss, run.num_updates + 1)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} (update "
                                f"{run.num_updates + 1}); stopping. The last good checkpoint is kept in "
                                f"{os.path.join(run.cfg.output, 'last.pth')}")
        (loss * weight).backward()
    return loss.item()


def train_step(run: Run, batches: Sequence, epoch: int, step: int, callbacks: Sequence[Callback]) -> float:
    """One update on ``batches`` (``grad_accum_steps`` micro-batches; the gradient of their mean loss over all
    samples, as one batch of them all would give); the mean loss. A loss that is not finite stops training with
    a TrainingError."""
    cfg, optimizer = run.cfg, run.optimizer
    optimizer.zero_grad(set_to_none=True)
    total, loss = sum(b[0].shape[0] for b in batches), 0.0
    for i, b in enumerate(batches):
        share = b[0].shape[0] / total
        loss += share * micro_step(run, b, share, i == len(batches) - 1, epoch, step, callbacks)
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    warm_up(run)
    optimizer.step()
    run.num_updates += 1
    run.scheduler.step_update(run.num_updates)
    if run.ema is not None:
        run.ema.update(run.unwrapped, step=run.num_updates)
    return loss


def update_batches(run: Run):
    """The training loader's batches grouped by update: lists of ``grad_accum_steps`` readable micro-batches (even
    with mixup), ``steps_per_epoch`` of them."""
    group, updates = [], 0
    for batch in run.train_loader:
        if updates >= run.steps_per_epoch:
            return
        batch = even_batch(run, batch)  # None: nothing readable
        if batch is None:
            continue
        group.append(batch)
        if len(group) == run.cfg.grad_accum_steps:
            yield group
            group, updates = [], updates + 1


def train_epoch(run: Run, epoch: int, callbacks: Sequence[Callback]) -> float:
    """One pass over the training data; the mean training loss over all processes."""
    run.model.train()
    run.sampler.set_epoch(epoch)
    loss_sum, seen = 0.0, 0
    bar = tqdm(total=run.steps_per_epoch, desc=f'epoch {epoch + 1}/{run.cfg.epochs}', leave=False,
               disable=run.rank != 0 or run.cfg.quiet)
    for step, batches in enumerate(update_batches(run)):
        loss = train_step(run, batches, epoch, step, callbacks)
        n = sum(b[0].shape[0] for b in batches)
        loss_sum += loss * n
        seen += n
        bar.set_postfix(loss=f'{loss:.3f}', lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        bar.update()
    bar.close()
    totals = torch.tensor([loss_sum, seen], dtype=torch.float64)
    if run.world > 1:
        dist.all_reduce(totals)
    return totals[0].item() / max(totals[1].item(), 1)


def checkpoint_dict(run: Run, epoch: int, val_acc: float, rngs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """What ``last.pth`` / ``best.pth`` hold (format ``vitpe.checkpoint.FORMAT``)."""
    return {
        'format': CHECKPOINT_FORMAT, 'model': unwrap(run.model).state_dict(), 'model_name': run.model_name,
        'model_kwargs': run.model_kwargs, 'img_size': run.cfg.img_size, 'num_classes': len(run.classes),
        'classes': run.classes, 'data': run.cfg.data, 'epoch': epoch, 'best_acc': run.best_acc,
        'val_acc': val_acc, 'num_updates': run.num_updates, 'optimizer': run.optimizer.state_dict(),
        'scheduler': run.scheduler.state_dict(), 'ema': run.ema.state_dict() if run.ema is not None else None,
        'rng': rngs, 'config': run.cfg.to_dict(),
    }


def end_epoch(run: Run, epoch: int, train_loss: float, started: float,
              callbacks: Sequence[Callback]) -> Dict[str, Any]:
    """Validate, write the checkpoints and the log row (rank 0), call the callbacks; the log row."""
    cfg = run.cfg
    metrics = evaluate(run.model, run.val_loader, run.device, cfg.amp, run.world)
    ema_acc = evaluate(run.ema.module, run.val_loader, run.device, cfg.amp, run.world)['acc'] if run.ema else None
    row = {'epoch': epoch + 1, 'train_loss': train_loss, 'val_loss': metrics['loss'], 'val_acc': metrics['acc'],
           'lr': run.optimizer.param_groups[0]['lr'], 'updates': run.num_updates,
           'epoch_time_s': round(time.time() - started, 2)}
    if ema_acc is not None:
        row['val_acc_ema'] = ema_acc
    is_best = metrics['acc'] > run.best_acc
    run.best_acc = max(run.best_acc, metrics['acc'])
    rngs = [rng_state()]
    if run.world > 1:
        rngs = [None] * run.world
        dist.all_gather_object(rngs, rng_state())
    if run.rank == 0:
        ckpt = checkpoint_dict(run, epoch, metrics['acc'], rngs)
        save_checkpoints(ckpt, cfg.output, is_best)
        run.logger.write(row)
    for cb in callbacks:
        cb.on_epoch_end(epoch + 1, row)
    if run.rank == 0 and not cfg.quiet:
        tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: train_loss {row['train_loss']:.4f} "
                   f"val_acc {row['val_acc']:.4f} ({row['epoch_time_s']:.1f}s)")
    return row


def train(cfg: TrainConfig, callbacks: Optional[Sequence[Callback]] = None) -> Dict[str, Any]:
    """Train as ``cfg`` says; the last epoch's log row plus ``best_acc``. Raises ``TrainingError`` (a NaN
    loss, a bad checkpoint) with a message for the user. Under torchrun, every process calls it."""
    if isinstance(cfg, argparse.Namespace):
        warnings.warn("train(argparse.Namespace) is deprecated; pass a vitpe.config.TrainConfig",
                      DeprecationWarning, stacklevel=2)
        cfg = TrainConfig.from_dict({k: v for k, v in vars(cfg).items() if k != 'config'}, source='namespace')
    callbacks = list(callbacks or ())
    rank, world, device, created_group = setup_distributed()
    try:
        run = prepare(cfg, rank, world, device)
        summary: Dict[str, Any] = {}
        for epoch in range(run.start_epoch, run.cfg.epochs):
            start = time.time()
            summary = end_epoch(run, epoch, train_epoch(run, epoch, callbacks), start, callbacks)
        if world > 1:
            dist.barrier()
        summary['best_acc'] = run.best_acc
        return summary
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- deprecated
def parse_args(argv: Optional[List[str]] = None) -> TrainConfig:
    """Deprecated: ``vitpe.config.parse_config`` (returns a ``TrainConfig``, no longer a Namespace)."""
    warnings.warn("vitpe.training.parse_args is deprecated; use vitpe.config.parse_config", DeprecationWarning,
                  stacklevel=2)
    return parse_config(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Deprecated: ``tools/train.py`` (the command line); 2 and a message on a ``TrainingError``."""
    warnings.warn("vitpe.training.main is deprecated; run tools/train.py or call train(TrainConfig(...))",
                  DeprecationWarning, stacklevel=2)
    return exit_code(train, parse_config(argv))


def __getattr__(name: str):
    """0.1.0 names that moved: ``build_parser`` (vitpe.config) and ``atomic_save`` (vitpe.checkpoint)."""
    moved = {'build_parser': ('vitpe.config', 'build_parser'), 'atomic_save': ('vitpe.checkpoint', 'save_checkpoint')}
    if name not in moved:
        raise AttributeError(f"module 'vitpe.training' has no attribute {name!r}")
    warnings.warn(f"vitpe.training.{name} is deprecated; use {'.'.join(moved[name])}", DeprecationWarning, 2)
    return getattr(__import__(moved[name][0], fromlist=[moved[name][1]]), moved[name][1])
