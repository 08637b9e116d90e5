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
import csv
import json
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
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import create_model, load_checkpoint, rng_state, save_checkpoints, set_rng_state
from .config import TrainConfig, parse_config
from .data import build_dataset, collate_skip_none, data_size, with_frames
from .errors import CheckpointError, TrainingError
from .eval.loop import evaluate

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


class Logger:
    """One row per epoch in log.csv and log.jsonl (rank 0)."""

    def __init__(self, folder: str, resume: bool):
        self.csv_path = os.path.join(folder, 'log.csv')
        self.jsonl_path = os.path.join(folder, 'log.jsonl')
        if not resume:
            for p in (self.csv_path, self.jsonl_path):
                if os.path.exists(p):
                    os.remove(p)

    def write(self, row: Dict[str, Any]) -> None:
        exists = os.path.exists(self.csv_path)
        with open(self.csv_path, 'a', newline='') as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if not exists:
                w.writeheader()
            w.writerow(row)
        with open(self.jsonl_path, 'a') as f:
            f.write(json.dumps(row) + '\n')

    def truncate(self, last_epoch: int) -> None:
        """After a resume, drop rows of epochs that were not checkpointed (killed mid-epoch)."""
        if os.path.exists(self.jsonl_path):
            rows = [json.loads(l) for l in open(self.jsonl_path) if l.strip()]
            rows = [r for r in rows if r['epoch'] <= last_epoch]
            os.remove(self.jsonl_path)
            if os.path.exists(self.csv_path):
                os.remove(self.csv_path)
            for r in rows:
                self.write(r)


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
    sampler: DistributedSampler
    steps_per_epoch: int
    model: torch.nn.Module = None
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
    """(checkpoint to resume, checkpoint to start from): ``resume='auto'`` is <output>/last.pth if it exists."""
    resume = None
    if cfg.resume:
        path = os.path.join(cfg.output, 'last.pth') if cfg.resume == 'auto' else cfg.resume
        if cfg.resume != 'auto' or os.path.exists(path):
            resume = load_checkpoint(path)
    initial = load_checkpoint(cfg.initial_checkpoint) if cfg.initial_checkpoint else None
    return resume, initial


def build_data(cfg: TrainConfig, rank: int, world: int) -> Dict[str, Any]:
    """Datasets, samplers and loaders (each process loads batch_size / world samples per step)."""
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    train_set = build_dataset(cfg.data, data_size(cfg), 'train', cfg.train_samples, seed=cfg.seed)
    val_set = build_dataset(cfg.data, data_size(cfg), 'val', cfg.val_samples, seed=cfg.seed)
    per_proc_batch = cfg.batch_size // world
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    train_loader = DataLoader(train_set, batch_size=per_proc_batch, sampler=sampler, drop_last=True,
                              num_workers=cfg.workers, collate_fn=collate_skip_none)
    val_sampler = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    val_loader = DataLoader(val_set, batch_size=per_proc_batch, sampler=val_sampler, num_workers=cfg.workers,
                            collate_fn=collate_skip_none)
    steps = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"the training set ({len(train_set)} samples) is smaller than one global batch "
                         f"({cfg.batch_size})")
    return dict(classes=list(train_set.classes), train_loader=train_loader, val_loader=val_loader,
                sampler=sampler, steps_per_epoch=steps)


def build_model(run: Run, initial: Optional[Dict[str, Any]]) -> None:
    """The model (weights from ``initial`` if given, a new head for another number of classes), its EMA,
    and the DDP wrapper for several processes."""
    num_classes = len(run.classes)
    model = create_model(run.model_name, num_classes, run.cfg.img_size, run.model_kwargs).to(run.device)
    if initial is not None:
        state = initial['model']
        if initial.get('num_classes') != num_classes:  # a new task: keep everything but the head
            state = {k: v for k, v in state.items() if not k.startswith('head.')}
            missing = model.load_state_dict(state, strict=False).missing_keys
            if any(not k.startswith('head.') for k in missing):
                raise CheckpointError(f"--initial-checkpoint is missing {missing}")
        else:
            model.load_state_dict(state)  # the scheme's pre-hook resizes tables to img_size
    run.ema = ModelEmaV3(model, decay=run.cfg.model_ema_decay) if run.cfg.model_ema else None
    if run.world > 1:
        model = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    run.model = model


def build_optimization(run: Run) -> None:
    """timm's optimizer and per-update scheduler, mixup / cutmix and the loss."""
    cfg = run.cfg
    run.optimizer = create_optimizer_v2(unwrap(run.model), opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.base_lrs = [g['lr'] for g in run.optimizer.param_groups]  # before the scheduler or a resume touch them
    run.scheduler, _ = create_scheduler_v2(run.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                           warmup_epochs=0, step_on_epochs=False,
                                           updates_per_epoch=run.steps_per_epoch)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        run.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                          num_classes=len(run.classes))
    run.criterion = SoftTargetCrossEntropy() if run.mixup else torch.nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


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
    resume, initial = load_sources(cfg)
    source = resume or initial
    if resume is not None:
        cfg = cfg.replace(img_size=resume['img_size'])
    model_kwargs = dict(source['model_kwargs']) if source and not cfg.model_kwargs else dict(cfg.model_kwargs)
    cfg = with_frames(cfg, cfg.model or source['model_name'], model_kwargs)  # video: clips of the model's frames
    seed_everything(cfg.seed)
    run = Run(cfg, rank, world, device, model_name=cfg.model or source['model_name'], model_kwargs=model_kwargs,
              **build_data(cfg, rank, world))
    build_model(run, initial if resume is None else None)
    build_optimization(run)
    if resume is not None:
        restore(run, resume)
    if rank == 0:
        run.logger = Logger(cfg.output, resume=resume is not None)
        if resume is not None:
            run.logger.truncate(resume['epoch'] + 1)  # rows are numbered from 1
    return run


# ---------------------------------------------------------------------------------------------- epochs
def train_step(run: Run, batch, epoch: int, step: int, callbacks: Sequence[Callback]) -> float:
    """One update on one batch; the loss. A loss that is not finite stops training with a TrainingError."""
    cfg, optimizer = run.cfg, run.optimizer
    x, y = batch[0].to(run.device), batch[1].to(run.device)
    if run.mixup is not None:
        x, y = run.mixup(x, y)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        loss = run.criterion(run.model(x), y)
    for cb in callbacks:
        loss = cb.on_loss(loss, run.num_updates + 1)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} (update "
                            f"{run.num_updates + 1}); stopping. The last good checkpoint is kept in "
                            f"{os.path.join(cfg.output, 'last.pth')}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    if run.num_updates < cfg.warmup_steps:  # linear warm-up over steps, then timm's schedule
        for g, lr in zip(optimizer.param_groups, run.base_lrs):
            g['lr'] = lr * (run.num_updates + 1) / cfg.warmup_steps
    optimizer.step()
    run.num_updates += 1
    run.scheduler.step_update(run.num_updates)
    if run.ema is not None:
        run.ema.update(unwrap(run.model), step=run.num_updates)
    return loss.item()


def train_epoch(run: Run, epoch: int, callbacks: Sequence[Callback]) -> float:
    """One pass over the training data; the mean training loss over all processes."""
    run.model.train()
    run.sampler.set_epoch(epoch)
    loss_sum, seen = 0.0, 0
    bar = tqdm(total=run.steps_per_epoch, desc=f'epoch {epoch + 1}/{run.cfg.epochs}', leave=False,
               disable=run.rank != 0 or run.cfg.quiet)
    for step, batch in enumerate(run.train_loader):
        if step >= run.steps_per_epoch:
            break
        if batch is None:
            continue
        loss = train_step(run, batch, epoch, step, callbacks)
        loss_sum += loss * batch[0].shape[0]
        seen += batch[0].shape[0]
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
    cfg = parse_config(argv)
    try:
        train(cfg)
    except TrainingError as e:
        print(f"error: {e}", flush=True)
        return 2
    return 0


def __getattr__(name: str):
    """0.1.0 names that moved: ``build_parser`` (vitpe.config) and ``atomic_save`` (vitpe.checkpoint)."""
    moved = {'build_parser': ('vitpe.config', 'build_parser'), 'atomic_save': ('vitpe.checkpoint', 'save_checkpoint')}
    if name not in moved:
        raise AttributeError(f"module 'vitpe.training' has no attribute {name!r}")
    warnings.warn(f"vitpe.training.{name} is deprecated; use {'.'.join(moved[name])}", DeprecationWarning, 2)
    import importlib
    return getattr(importlib.import_module(moved[name][0]), moved[name][1])
