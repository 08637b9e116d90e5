"""Training and fine-tuning of any vitpe (or timm) model by name; ``tools/train.py`` is a thin wrapper.

One process or several (``torchrun --nproc_per_node=N``: DistributedDataParallel, gloo on CPU,
nccl on GPU; ``--batch-size`` is the global batch). timm's optimizer and scheduler factories, timm's
mixup / cutmix and model EMA, mixed precision as options. Every epoch: a progress bar, a row in
``log.csv`` and ``log.jsonl``, and an atomic checkpoint (``last.pth``, ``best.pth``) holding the
model name and arguments, the training resolution, the epoch and every RNG state, so that
``--resume`` continues after a kill and gives the same result as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import timm
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from .data import build_dataset, collate_skip_none

CHECKPOINT_FORMAT = 'vitpe-train-1'
# fault injection, used by the tests only: a NaN loss at this update, a SIGKILL after this epoch
_FAULT_NAN_AT_UPDATE = int(os.environ.get('VITPE_FAULT_NAN_AT_UPDATE', '0'))
_FAULT_KILL_AFTER_EPOCH = int(os.environ.get('VITPE_FAULT_KILL_AFTER_EPOCH', '0'))


class TrainingError(RuntimeError):
    """Training stopped with a message for the user (NaN loss, bad checkpoint)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Train or fine-tune a vitpe / timm model.')
    p.add_argument('--config', help='YAML file of defaults (keys as the long options, with _); CLI overrides it')
    p.add_argument('--model', help='timm model name, e.g. vitpe_tiny_patch16_rope_mixed_224')
    p.add_argument('--model-kwargs', type=json.loads, default={},
                   help='JSON of extra model arguments, e.g. \'{"patch_size": 8, "depth": 6}\'')
    p.add_argument('--data', default='synthetic:position', help='synthetic:<position|quadrant|kind> or an ImageFolder path')
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--train-samples', type=int, default=None, help='built-in data: training scenes')
    p.add_argument('--val-samples', type=int, default=None, help='built-in data: validation scenes')
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=64, help='global batch over all processes')
    p.add_argument('--opt', default='adamw')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--weight-decay', type=float, default=0.05)
    p.add_argument('--sched', default='cosine')
    p.add_argument('--warmup-steps', type=int, default=50)
    p.add_argument('--min-lr', type=float, default=1e-5)
    p.add_argument('--clip-grad', type=float, default=1.0)
    p.add_argument('--label-smoothing', type=float, default=0.0)
    p.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    p.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (0: off)')
    p.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3)')
    p.add_argument('--model-ema-decay', type=float, default=0.998)
    p.add_argument('--amp', action='store_true', help='mixed precision (bf16 autocast)')
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--output', required=False, default='runs/train')
    p.add_argument('--resume', nargs='?', const='auto', default=None,
                   help='continue from a checkpoint (default: <output>/last.pth)')
    p.add_argument('--finetune', help='initialise from a checkpoint (tables resized to --img-size)')
    p.add_argument('--max-steps-per-epoch', type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.config:
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"config {args.config!r} has unknown keys {unknown}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    if not args.model and not args.finetune and not args.resume:
        parser.error('--model is required (or --finetune / --resume, which name the model)')
    return args


# ---------------------------------------------------------------------------------------------- helpers
def setup_distributed():
    """(rank, world_size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0'))) if torch.cuda.is_available() \
        else torch.device('cpu')
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    return {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(), 'python': random.getstate()}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])


def atomic_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves half a checkpoint."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A vitpe training checkpoint; anything else gets an error that says what it is not."""
    if not os.path.isfile(path):
        raise TrainingError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise TrainingError(f"checkpoint {path!r} could not be read as a torch file: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT or 'model' not in ckpt:
        raise TrainingError(f"{path!r} is not a vitpe training checkpoint (expected a dict with format "
                            f"{CHECKPOINT_FORMAT!r}, 'model', 'model_name', 'img_size')")
    return ckpt


def create_model(name: str, num_classes: int, img_size: int, model_kwargs: Dict[str, Any]) -> torch.nn.Module:
    kwargs = dict(model_kwargs)
    kwargs.setdefault('img_size', img_size)
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


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


@torch.no_grad()
def evaluate(model, loader, device, amp: bool = False, world: int = 1) -> Dict[str, float]:
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for batch in loader:
        if batch is None:
            continue
        x, y = batch[0].to(device), batch[1].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        totals[0] += F.cross_entropy(out.float(), y, reduction='sum')
        totals[1] += (out.argmax(-1) == y).sum()
        totals[2] += y.numel()
    if world > 1:
        dist.all_reduce(totals)
    n = max(totals[2].item(), 1)
    return {'loss': totals[0].item() / n, 'acc': totals[1].item() / n, 'n': int(totals[2].item())}


# ---------------------------------------------------------------------------------------------- main
def train(args: argparse.Namespace) -> Dict[str, Any]:
    rank, world, device = setup_distributed()
    main_proc = rank == 0
    os.makedirs(args.output, exist_ok=True)

    resume_ckpt = None
    if args.resume:
        path = os.path.join(args.output, 'last.pth') if args.resume == 'auto' else args.resume
        if args.resume == 'auto' and not os.path.exists(path):
            resume_ckpt = None  # nothing finished yet: start from scratch
        else:
            resume_ckpt = load_checkpoint(path)
    finetune_ckpt = load_checkpoint(args.finetune) if args.finetune else None
    source = resume_ckpt or finetune_ckpt
    model_name = args.model or source['model_name']
    model_kwargs = dict(source['model_kwargs']) if source and not args.model_kwargs else dict(args.model_kwargs)
    if resume_ckpt is not None:
        args.img_size = resume_ckpt['img_size']

    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    seed_everything(args.seed)
    train_set = build_dataset(args.data, args.img_size, 'train', args.train_samples, seed=args.seed)
    val_set = build_dataset(args.data, args.img_size, 'val', args.val_samples, seed=args.seed)
    num_classes = len(train_set.classes)

    model = create_model(model_name, num_classes, args.img_size, model_kwargs).to(device)
    if finetune_ckpt is not None and resume_ckpt is None:
        state = finetune_ckpt['model']
        if finetune_ckpt.get('num_classes') != num_classes:  # a new task: keep everything but the head
            state = {k: v for k, v in state.items() if not k.startswith('head.')}
            missing = unwrap(model).load_state_dict(state, strict=False).missing_keys
            if any(not k.startswith('head.') for k in missing):
                raise TrainingError(f"--finetune checkpoint is missing {missing}")
        else:
            model.load_state_dict(state)  # the scheme's pre-hook resizes tables to --img-size
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)

    per_proc_batch = args.batch_size // world
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    train_loader = DataLoader(train_set, batch_size=per_proc_batch, sampler=sampler, drop_last=True,
                              num_workers=args.workers, collate_fn=collate_skip_none)
    val_sampler = DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    val_loader = DataLoader(val_set, batch_size=per_proc_batch, sampler=val_sampler, num_workers=args.workers,
                            collate_fn=collate_skip_none)
    steps_per_epoch = len(train_loader)
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_set)} samples) is smaller than one global batch "
                         f"({args.batch_size})")

    optimizer = create_optimizer_v2(unwrap(model), opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
    base_lrs = [g['lr'] for g in optimizer.param_groups]  # before the scheduler or a resume touch them
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr,
                                       warmup_epochs=0, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    warmup = args.warmup_steps
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing,
                      num_classes=num_classes)
    criterion = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    start_epoch, best_acc, num_updates = 0, -1.0, 0
    if resume_ckpt is not None:
        unwrap(model).load_state_dict(resume_ckpt['model'])
        optimizer.load_state_dict(resume_ckpt['optimizer'])
        scheduler.load_state_dict(resume_ckpt['scheduler'])
        if ema is not None and resume_ckpt.get('ema') is not None:
            ema.load_state_dict(resume_ckpt['ema'])
        start_epoch, best_acc, num_updates = resume_ckpt['epoch'] + 1, resume_ckpt['best_acc'], resume_ckpt['num_updates']
        set_rng_state(resume_ckpt['rng'][rank] if rank < len(resume_ckpt['rng']) else resume_ckpt['rng'][0])
    logger = Logger(args.output, resume=resume_ckpt is not None) if main_proc else None
    if logger is not None and resume_ckpt is not None:
        logger.truncate(resume_ckpt['epoch'] + 1)  # rows are numbered from 1

    summary = {}
    for epoch in range(start_epoch, args.epochs):
        model.train()
        sampler.set_epoch(epoch)
        t0 = time.time()
        loss_sum, seen = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f'epoch {epoch + 1}/{args.epochs}', leave=False,
                   disable=not main_proc or args.quiet)
        for step, batch in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            if batch is None:
                continue
            x, y = batch[0].to(device), batch[1].to(device)
            if mixup is not None:
                x, y = mixup(x, y)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = criterion(model(x), y)
            if _FAULT_NAN_AT_UPDATE == num_updates + 1:  # fault injection for the tests
                loss = loss * float('nan')
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} (update "
                                    f"{num_updates + 1}); stopping. The last good checkpoint is kept in "
                                    f"{os.path.join(args.output, 'last.pth')}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            if num_updates < warmup:  # linear warm-up over steps, then timm's schedule
                for g, lr in zip(optimizer.param_groups, base_lrs):
                    g['lr'] = lr * (num_updates + 1) / warmup
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates)
            if ema is not None:
                ema.update(unwrap(model), step=num_updates)
            loss_sum += loss.item() * x.shape[0]
            seen += x.shape[0]
            bar.set_postfix(loss=f'{loss.item():.3f}', lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            bar.update()
        bar.close()
        metrics = evaluate(model, val_loader, device, args.amp, world)
        if ema is not None:
            metrics_ema = evaluate(ema.module, val_loader, device, args.amp, world)
        train_loss = torch.tensor([loss_sum, seen], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(train_loss)
        row = {'epoch': epoch + 1, 'train_loss': train_loss[0].item() / max(train_loss[1].item(), 1),
               'val_loss': metrics['loss'], 'val_acc': metrics['acc'], 'lr': optimizer.param_groups[0]['lr'],
               'updates': num_updates, 'epoch_time_s': round(time.time() - t0, 2)}
        if ema is not None:
            row['val_acc_ema'] = metrics_ema['acc']
        is_best = metrics['acc'] > best_acc
        best_acc = max(best_acc, metrics['acc'])
        rngs = [rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state())
        if main_proc:
            ckpt = {
                'format': CHECKPOINT_FORMAT, 'model': unwrap(model).state_dict(), 'model_name': model_name,
                'model_kwargs': model_kwargs, 'img_size': args.img_size, 'num_classes': num_classes,
                'classes': list(train_set.classes), 'data': args.data, 'epoch': epoch, 'best_acc': best_acc,
                'val_acc': metrics['acc'], 'num_updates': num_updates, 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'ema': ema.state_dict() if ema is not None else None,
                'rng': rngs, 'args': {k: v for k, v in vars(args).items()},
            }
            atomic_save(ckpt, os.path.join(args.output, 'last.pth'))
            if is_best:
                atomic_save(ckpt, os.path.join(args.output, 'best.pth'))
            logger.write(row)
            if _FAULT_KILL_AFTER_EPOCH == epoch + 1:  # fault injection for the tests: die like a kill -9
                os.kill(os.getpid(), signal.SIGKILL)
            if not args.quiet:
                tqdm.write(f"epoch {epoch + 1}/{args.epochs}: train_loss {row['train_loss']:.4f} "
                           f"val_acc {row['val_acc']:.4f} ({row['epoch_time_s']:.1f}s)")
        summary = row
    if world > 1:
        dist.barrier()
    summary['best_acc'] = best_acc
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except TrainingError as e:
        print(f"error: {e}", flush=True)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
