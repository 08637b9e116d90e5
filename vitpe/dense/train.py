"""Training of the torchvision detectors and segmenters of ``vitpe.dense``: ``train(DenseConfig(...))``, the loop of
``tools/train_det.py`` and ``tools/train_seg.py``, with ``tools/train.py``'s conventions: one process or several
(``torchrun``: DistributedDataParallel, ``batch_size`` global), AdamW with warm-up and cosine (timm), a progress
bar, a row per epoch in ``log.csv`` and ``log.jsonl``, atomic checkpoints (``last.pth``, ``best.pth``; read back with
``weights_only=True``) holding every RNG state, so ``resume`` continues after a kill.

Validation every epoch: COCO box and mask AP (detection; AP50 decides the best epoch) or mIoU (segmentation)."""
from __future__ import annotations

import os
import time
from typing import Any, Dict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..checkpoint import rng_state, save_checkpoint, set_rng_state
from ..errors import CheckpointError, TrainingError, exit_code
from ..training import Logger, seed_everything, setup_distributed, unwrap
from .config import DenseConfig, parse_dense_config
from .data import CocoDetection, SegmentationFolder, collate_detection, write_coco, write_segmentation_folders
from .detection import build_detector
from .metrics import ConfusionMatrix, coco_ap, coco_results
from .segmentation import build_segmenter
from .transforms import pipeline

__all__ = ['train', 'main', 'FORMAT']
FORMAT = 'vitpe-dense-1'


def data_root(cfg: DenseConfig, rank: int) -> str:
    """The data folder; the built-in scenes are written once (rank 0) under <output>/data."""
    if cfg.data != 'synthetic':
        return cfg.data
    root = os.path.join(cfg.output, 'data')
    done = os.path.join(root, f'.written_{cfg.task}_{cfg.train_samples}_{cfg.val_samples}_{cfg.img_size}')
    if rank == 0 and not os.path.exists(done):
        write = write_coco if cfg.task == 'detection' else write_segmentation_folders
        for split, n in (('train', cfg.train_samples), ('val', cfg.val_samples)):
            write(root, n, img_size=cfg.img_size, split=split, seed=0)
        open(done, 'w').close()
    if dist.is_initialized():
        dist.barrier()
    return root


def dense_dataset(cfg: DenseConfig, root: str, split: str, augment: str, size: int):
    """The ``split`` of the data under ``root`` (COCO or ADE20K layout) through pipeline ``augment`` at ``size``."""
    size = (size, size)
    if cfg.task == 'detection':
        return CocoDetection(os.path.join(root, 'annotations', f'instances_{split}.json'), os.path.join(root, split),
                             cfg.num_classes, pipeline(augment, size), masks=(cfg.head or 'maskrcnn') == 'maskrcnn')
    return SegmentationFolder(root, split, cfg.num_classes, pipeline(augment, size, 'segmentation'))


def datasets(cfg: DenseConfig, root: str):
    return (dense_dataset(cfg, root, 'train', cfg.augment, cfg.img_size),
            dense_dataset(cfg, root, 'val', 'resize', cfg.img_size))


def build(cfg: DenseConfig) -> torch.nn.Module:
    blocks = None if cfg.global_blocks is None else tuple(cfg.global_blocks)
    # the trunk's reference grid is the training size's: tables are made (or resized on loading) for it, and
    # resolution strategies scale from it (ViTDet resizes its table to the training grid likewise)
    backbone_args = dict(dict(img_size=cfg.img_size), **cfg.model_kwargs, window_size=cfg.window_size,
                         global_blocks=blocks, checkpoint=cfg.backbone_checkpoint)
    if cfg.task == 'detection':
        head = dict(box_head_size=cfg.head_channels, mask_head_channels=cfg.head_channels) if cfg.head_channels \
            else {}
        return build_detector(cfg.head or 'maskrcnn', cfg.model, cfg.num_classes, out_channels=cfg.channels,
                              backbone_args=backbone_args, min_size=cfg.img_size, max_size=cfg.img_size, **head,
                              **cfg.detector_args)
    if cfg.detector_args:
        raise TrainingError(f"detector_args {sorted(cfg.detector_args)} are for detection, not segmentation")
    return build_segmenter(cfg.head or 'upernet', cfg.model, cfg.num_classes, out_channels=cfg.channels,
                           channels=cfg.head_channels, backbone_args=backbone_args)


def loaders(cfg: DenseConfig, rank: int, world: int):
    train_set, val_set = datasets(cfg, data_root(cfg, rank))
    if cfg.batch_size % world:
        raise TrainingError(f"batch_size={cfg.batch_size} is not divisible by the {world} processes")
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    collate = collate_detection if cfg.task == 'detection' else None
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, cfg.batch_size // world, shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg.workers, collate_fn=collate, drop_last=len(train_set) > cfg.batch_size,
                              generator=gen)
    val_loader = DataLoader(val_set, max(cfg.batch_size // world, 1), collate_fn=collate, num_workers=cfg.workers)
    return train_loader, val_loader, sampler


def read_checkpoint(path: str) -> Dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path!r} could not be read safely ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        raise CheckpointError(f"{path!r} is not a vitpe dense training checkpoint (format {FORMAT!r})")
    return ckpt


def step(model, batch, cfg: DenseConfig, device) -> torch.Tensor:
    if cfg.task == 'detection':
        images, targets = batch
        images = [i.to(device) for i in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        return sum(model(images, targets).values())
    images, masks = batch
    return model(images.to(device), masks.to(device))['loss_seg']


@torch.no_grad()
def evaluate(model, loader, cfg: DenseConfig, device) -> Dict[str, float]:
    """Detection: COCO AP of the whole validation set; segmentation: mIoU and pixel accuracy."""
    model.eval()
    if cfg.task == 'detection':
        data, results = loader.dataset, []
        for images, targets in loader:
            preds = model([i.to(device) for i in images])
            ids = [int(t['image_id']) for t in targets]
            results += coco_results(preds, ids, data.category_of, masks=data.with_masks)
        kinds = ('bbox', 'segm') if data.with_masks else ('bbox',)
        return coco_ap(data.ann_file, results, kinds)
    cm = ConfusionMatrix(cfg.num_classes + 1)
    for images, masks in loader:
        cm.update(unwrap(model).predict(images.to(device)), masks)
    return {'mIoU': cm.miou(), 'pixel_acc': cm.accuracy()}


def train_epoch(run: Dict[str, Any], epoch: int) -> float:
    cfg, model, opt, sched = run['cfg'], run['model'], run['optimizer'], run['scheduler']
    model.train()
    if run['sampler'] is not None:
        run['sampler'].set_epoch(epoch)
    loader = run['train_loader']  # shuffling and augmentation seeded by epoch: a resumed run repeats them
    loader.generator.manual_seed(cfg.seed * 1000 + epoch)
    if getattr(loader.dataset, 'transform', None) is not None:
        loader.dataset.transform.set_random_seed(cfg.seed * 1000 + epoch + run['rank'] * 7919)
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=cfg.quiet or run['rank'] != 0,
               leave=False)
    for i, batch in enumerate(bar):
        if cfg.max_steps_per_epoch is not None and i >= cfg.max_steps_per_epoch:
            break
        loss = step(model, batch, cfg, run['device'])
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}: lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        run['num_updates'] += 1
        sched.step_update(run['num_updates'])
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f'{total / count:.4f}')
    return total / max(count, 1)


def prepare(cfg: DenseConfig, rank: int, world: int, device) -> Dict[str, Any]:
    seed_everything(cfg.seed + rank)
    os.makedirs(cfg.output, exist_ok=True)
    train_loader, val_loader, sampler = loaders(cfg, rank, world)
    model = build(cfg).to(device)
    opt = create_optimizer_v2(model, 'adamw', lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    sched = CosineLRScheduler(opt, t_initial=max(cfg.epochs * steps, 1), lr_min=cfg.min_lr,
                              warmup_t=cfg.warmup_steps, warmup_lr_init=cfg.lr * 1e-3, t_in_epochs=False)
    run = dict(cfg=cfg, rank=rank, world=world, device=device, train_loader=train_loader, val_loader=val_loader,
               sampler=sampler, model=model, optimizer=opt, scheduler=sched, num_updates=0, start_epoch=0,
               best=-1.0)
    last = os.path.join(cfg.output, 'last.pth')
    if cfg.resume and os.path.exists(last):
        ckpt = read_checkpoint(last)
        model.load_state_dict(ckpt['model'])
        opt.load_state_dict(ckpt['optimizer'])
        sched.load_state_dict(ckpt['scheduler'])
        run.update(num_updates=ckpt['num_updates'], start_epoch=ckpt['epoch'] + 1, best=ckpt['best'])
        set_rng_state(ckpt['rng'][min(rank, len(ckpt['rng']) - 1)])
    if world > 1:  # unused: the trunk's final norm; BatchNorm synchronised over the processes on GPUs
        if device.type == 'cuda':
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        run['model'] = DistributedDataParallel(model, find_unused_parameters=True)
    run['logger'] = Logger(cfg.output, resume=run['start_epoch'] > 0) if rank == 0 else None
    if run['logger'] is not None and run['start_epoch']:
        run['logger'].truncate(run['start_epoch'])
    return run


def end_epoch(run: Dict[str, Any], epoch: int, loss: float, started: float) -> Dict[str, Any]:
    cfg = run['cfg']
    metrics = evaluate(unwrap(run['model']), run['val_loader'], cfg, run['device']) if run['rank'] == 0 else {}
    rngs = [None] * run['world']  # after validation, whose loader draws from the global RNG
    if run['world'] > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    row = {'epoch': epoch + 1, 'train_loss': loss, **metrics, 'lr': run['optimizer'].param_groups[0]['lr'],
           'seconds': time.time() - started}
    if run['rank'] == 0:
        score = metrics.get('bbox_AP50', metrics.get('mIoU', 0.0))
        is_best = score > run['best']
        run['best'] = max(score, run['best'])
        ckpt = {'format': FORMAT, 'model': unwrap(run['model']).state_dict(), 'optimizer':
                run['optimizer'].state_dict(), 'scheduler': run['scheduler'].state_dict(), 'epoch': epoch,
                'num_updates': run['num_updates'], 'best': run['best'], 'metrics': metrics, 'rng': rngs,
                'config': cfg.to_dict()}
        save_checkpoint(ckpt, os.path.join(cfg.output, 'last.pth'))
        if is_best:
            save_checkpoint(ckpt, os.path.join(cfg.output, 'best.pth'))
        run['logger'].write(row)
        if not cfg.quiet:
            print(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()), flush=True)
    if run['world'] > 1:
        dist.barrier()
    return row


def train(cfg: DenseConfig) -> Dict[str, Any]:
    """Train as ``cfg`` says; returns the last epoch's log row (rank 0: with the validation metrics)."""
    rank, world, device, created = setup_distributed()
    try:
        run = prepare(cfg, rank, world, device)
        row = {}
        for epoch in range(run['start_epoch'], cfg.epochs):
            started = time.time()
            loss = train_epoch(run, epoch)
            row = end_epoch(run, epoch, loss, started)
        return row
    finally:
        if created:
            dist.destroy_process_group()


def main(argv, task: str) -> int:
    """The command line of ``tools/train_det.py`` / ``train_seg.py``: a TrainingError prints its message, exit code 2."""
    return exit_code(train, parse_dense_config(argv, task))
