"""The resolution sweep of dense models: detectors and segmenters trained at one size (``tools/train_det.py``,
``train_seg.py``), evaluated at other sizes without fine-tuning, under the training-free strategies that apply to
their scheme; a table (mean ± std over the seeds of a run), a CSV and a plot of box AP50 or mIoU against the size.
``tools/eval_dense.py`` is the command line.

Built-in data: the test split (never seen in training or model selection), the same scenes rendered at every size
(written once per size under ``data_dir``). A folder: its ``val`` split resized to each size."""
from __future__ import annotations

import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..eval.strategies import applicable_strategies, apply_strategy
from ..eval.sweep import plot_lines, write_csv
from ..pe.strategy import ResolutionStrategy
from .config import DenseConfig
from .data import collate_detection, write_coco, write_segmentation_folders
from .train import build, dense_dataset, evaluate, read_checkpoint

__all__ = ['DenseRecord', 'load_dense', 'dense_sweep', 'dense_markdown', 'write_dense_results', 'SCORE']

SCORE = {'detection': 'bbox_AP50', 'segmentation': 'mIoU'}  # the number in the table and the plot


@dataclass
class DenseRecord:
    """One evaluation of one checkpoint at one size under one strategy; ``score`` is ``metric``'s value (box AP50
    or mIoU), the other metrics beside it."""
    checkpoint: str
    label: str
    seed: Optional[int]
    model: str
    scheme: str
    task: str
    train_res: int
    res: int
    strategy: str
    metric: str
    score: float
    n: int
    seconds: float
    bbox_AP: Optional[float] = None
    bbox_AP75: Optional[float] = None
    segm_AP: Optional[float] = None
    segm_AP50: Optional[float] = None
    pixel_acc: Optional[float] = None


def load_dense(path: str, device=torch.device('cpu')):
    """(model in eval mode, its DenseConfig) of a dense training checkpoint (read with ``weights_only=True``)."""
    ckpt = read_checkpoint(path)
    cfg = DenseConfig.from_dict(ckpt['config'], source=f'checkpoint {path!r}')
    cfg.backbone_checkpoint = None  # the weights are the dense checkpoint's (the classifier file need not exist)
    model = build(cfg)
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), cfg


def run_label(path: str) -> tuple:
    """(label, seed) of a checkpoint from its folder: ``runs/<name>/seed<k>/best.pth`` -> (<name>, k), else (the
    folder's name, None)."""
    folder = os.path.dirname(os.path.abspath(path))
    m = re.fullmatch(r'seed(\d+)', os.path.basename(folder))
    if m:
        return os.path.basename(os.path.dirname(folder)), int(m.group(1))
    return os.path.basename(folder), None


def trunk_of(model):
    """The vitpe trunk inside a torchvision detector or a vitpe segmenter."""
    return model.backbone.vit.trunk


def set_input_size(model, cfg: DenseConfig, size: int) -> None:
    """Detectors resize their inputs (torchvision's ``GeneralizedRCNNTransform``): to ``size`` from now on."""
    if cfg.task == 'detection':
        model.transform.min_size, model.transform.max_size = (size,), size


def test_data(cfg: DenseConfig, size: int, samples: int, data_dir: str):
    """The evaluation set at ``size``: built-in scenes (test split) rendered at it, or a folder's val split resized."""
    if cfg.data != 'synthetic':
        return dense_dataset(cfg, cfg.data, 'val', 'resize', size)
    root = os.path.join(data_dir, f'{cfg.task}_{samples}_{size}px')
    done = os.path.join(root, '.written')
    if not os.path.exists(done):
        write = write_coco if cfg.task == 'detection' else write_segmentation_folders
        write(root, samples, img_size=size, split='test', seed=0)
        open(done, 'w').close()
    return dense_dataset(cfg, root, 'test', 'resize', size)  # rendered at size: the resize keeps it


def dense_sweep(checkpoints: Sequence[str], sizes: Sequence[int], strategies: Sequence[str] = ('none',),
                samples: int = 64, batch_size: int = 8, data_dir: str = 'sweep_dense/data',
                device=torch.device('cpu'), progress: bool = True) -> List[DenseRecord]:
    """Evaluate every checkpoint at every size under every strategy that applies to its scheme ('all': every
    single one); sizes must be multiples of the trunk's patch size."""
    named = [ResolutionStrategy.parse(s).name for s in strategies if s != 'all']  # bad names raise here
    models = [load_dense(p, device) for p in checkpoints]
    jobs = []
    for path, (model, cfg) in zip(checkpoints, models):
        patch = max(trunk_of(model).patch_embed.patch_size)
        bad = [s for s in sizes if s % patch]
        if bad:
            raise ValueError(f"sizes {bad} are not multiples of the patch size {patch} of {path}")
        allowed = applicable_strategies(trunk_of(model))
        chosen = list(allowed) if 'all' in strategies else []
        chosen += [s for s in named if s not in chosen and all(p in allowed for p in s.split('+'))]
        jobs += [(path, model, cfg, s, size) for s in chosen for size in sorted(sizes)]
    records = []
    for path, model, cfg, strategy, size in tqdm(jobs, desc='dense sweep', disable=not progress):
        data = test_data(cfg, size, samples, data_dir)
        loader = DataLoader(data, batch_size, collate_fn=collate_detection if cfg.task == 'detection' else None)
        set_input_size(model, cfg, size)
        started = time.time()
        with apply_strategy(trunk_of(model), strategy):
            metrics = evaluate(model, loader, cfg, device)
        set_input_size(model, cfg, cfg.img_size)
        label, seed = run_label(path)
        metric = SCORE[cfg.task]
        extra = {k: v for k, v in metrics.items() if k in DenseRecord.__dataclass_fields__}
        records.append(DenseRecord(checkpoint=path, label=label, seed=seed, model=cfg.model,
                                   scheme=getattr(trunk_of(model).pos_enc, 'name', '?'), task=cfg.task,
                                   train_res=cfg.img_size, res=size, strategy=strategy, metric=metric,
                                   score=float(metrics[metric]), n=len(data), seconds=time.time() - started,
                                   **extra))
    return records


def _grouped(records: Sequence[DenseRecord]) -> Dict[tuple, Dict[int, List[DenseRecord]]]:
    """(label, strategy) -> {size: the records of its seeds}."""
    out: Dict[tuple, Dict[int, List[DenseRecord]]] = {}
    for r in records:
        out.setdefault((r.label, r.strategy), {}).setdefault(r.res, []).append(r)
    return out


def _mean_std(values: List[float]) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def dense_markdown(records: Sequence[DenseRecord]) -> str:
    """Rows: run (the seeds of ``runs/<name>/seed<k>`` together) and strategy; columns: sizes; cells: the score,
    mean ± std over the seeds where there are several; the training size marked with *."""
    sizes = sorted({r.res for r in records})
    metric = records[0].metric
    lines = [f'{metric} (mean ± std over seeds; * the training size)', '',
             '| run | scheme | strategy | seeds | train | ' + ' | '.join(map(str, sizes)) + ' |',
             '|---|---|---|---|---|' + '---|' * len(sizes)]
    for (label, strategy), by_res in _grouped(records).items():
        first = next(iter(by_res.values()))[0]
        cells = []
        for s in sizes:
            runs = by_res.get(s)
            if not runs:
                cells.append('')
                continue
            mean, std = _mean_std([r.score for r in runs])
            mark = '*' if s == first.train_res else ''
            cells.append(f'{mean:.3f} ± {std:.3f}{mark}' if len(runs) > 1 else f'{mean:.3f}{mark}')
        seeds = len(next(iter(by_res.values())))
        lines.append(f'| {label} | {first.scheme} | {strategy} | {seeds} | {first.train_res} | ' + ' | '.join(cells)
                     + ' |')
    return '\n'.join(lines) + '\n'


def write_dense_results(records: Sequence[DenseRecord], folder: str) -> Dict[str, str]:
    """``results.csv`` (a row per checkpoint, size and strategy), ``results.md`` and ``resolution.png`` (the
    score against size, the spread over seeds as a band)."""
    os.makedirs(folder, exist_ok=True)
    paths = {'csv': os.path.join(folder, 'results.csv'), 'md': os.path.join(folder, 'results.md'),
             'png': os.path.join(folder, 'resolution.png')}
    metric = records[0].metric
    write_csv(records, paths['csv'], header=f'score: {metric} on the test split at size res (pixels, square), '
                                            f'trained at train_res; seconds: the whole evaluation')
    with open(paths['md'], 'w') as f:
        f.write(dense_markdown(records))
    lines = {}
    for key, by_res in _grouped(records).items():
        points = {}
        for s, runs in by_res.items():
            mean, std = _mean_std([r.score for r in runs])
            points[s] = (mean, mean - std, mean + std) if len(runs) > 1 else (mean, None, None)
        lines[key] = (next(iter(by_res.values()))[0].train_res, points)
    plot_lines(lines, paths['png'], f'{metric} against test size (mean ± std over seeds)',
               xlabel='test size (pixels)', train_name='training size', ylabel=metric)
    return paths
