"""The resolution sweep as a library: checkpoints x resolutions x strategies in, records out; records
in, a markdown table, a CSV and a plot out. ``tools/eval_resolution.py`` is a thin wrapper."""
from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from tqdm import tqdm

from ..checkpoint import load_model
from ..data.pipeline import check_protocol, eval_dataset, eval_spec
from ..data.synthetic import builtin_kind
from ..memory import PeakMemory
from .diagnostics import DIAGNOSTICS_HEADER
from .loop import evaluate, tensor_batches
from ..pe.strategy import ResolutionStrategy
from .strategies import applicable_strategies


@dataclass
class Record:
    """One evaluation: ``imgs_per_s`` over the forward passes only (data prepared beforehand);
    ``peak_mem_mb`` the peak rise of memory during the evaluation (``vitpe.memory.PeakMemory``)."""
    checkpoint: str
    label: str
    model: str
    scheme: str
    train_res: int
    res: int
    strategy: str
    acc: float
    loss: float
    n: int
    imgs_per_s: float
    peak_mem_mb: float
    device: str
    seed: Optional[int] = None  # the training seed (the study's runs); None outside the study
    protocol: str = 'crop'  # image folders: vitpe.data.pipeline.EVAL_PROTOCOLS (the scenes are rendered at res)
    # with ``sweep(diagnostics=True)``: {'entropy' | 'entropy_norm' | 'distance': [value per layer]}
    # (vitpe.eval.diagnostics), written to the CSV as columns <name>_l<layer> and <name>_mean
    diagnostics: Optional[Dict[str, List[float]]] = None
    frames: Optional[int] = None  # video: frames of the test clips (``res`` their frame size); None for images
    train_frames: Optional[int] = None  # video: frames of the training clips


def check_resolutions(model, resolutions: Sequence[int], frames: Sequence[Optional[int]] = (None,)) -> None:
    """Every resolution (and, for a video model, frame count) must give a grid (the patch embedding's own
    check), reported all at once."""
    bad = []
    for f in frames:
        for r in resolutions:
            try:
                model.patch_embed.grid_for(((f,) if f else ()) + (r,) * 2)
            except ValueError:
                bad.append(f"{f}x{r}" if f else r)
    if bad:
        raise ValueError(f"{'clip sizes' if frames[0] else 'resolutions'} {bad} are not divisible by the model's "
                         f"patch size {model.patch_embed.patch_size}")


def clip_frames(model, frames: Optional[Sequence[int]]) -> List[Optional[int]]:
    """The frame counts a model is evaluated at: ``frames`` (default its training clip's) for a video model,
    [None] for an image model."""
    if model.patch_embed.rank != 3:
        return [None]
    return sorted(int(f) for f in frames) if frames else [model.patch_embed.img_size[0]]


def materialize(dataset) -> tuple:
    """All samples of a dataset as two tensors (rendering / decoding is not timed)."""
    xs, ys = [], []
    for item in dataset:
        if item is None:
            continue
        xs.append(item[0])
        ys.append(item[1])
    if not xs:
        raise ValueError("the evaluation set is empty")
    return torch.stack(xs), torch.tensor(ys)


def sweep(checkpoints: Sequence[str], resolutions: Sequence[int], strategies: Sequence[str] = ('none',),
          data: Optional[str] = None, samples: int = 512, batch_size: int = 64,
          device: torch.device = torch.device('cpu'), progress: bool = True,
          labels: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
          diagnostics: bool = False, diagnostic_samples: int = 256, protocol: Union[str, Sequence[str]] = 'crop',
          frames: Optional[Sequence[int]] = None, cache: Optional[Dict[tuple, tuple]] = None) -> List[Record]:
    """Evaluate every checkpoint at every resolution (video: and every number of ``frames``, default the
    training clip's) with no fine-tuning, under every strategy.

    ``strategies`` are names or combinations ('pi+logit') and may contain 'all' (every single strategy that
    applies to the scheme); a strategy with a part that does not apply to a checkpoint's scheme is skipped
    for it. The built-in data is the test split
    (never seen in training or model selection); the same scenes are rendered at every resolution. Image
    folders go through each checkpoint's evaluation transform at every resolution under ``protocol`` ('crop':
    resize by its crop_pct, then the centre crop; 'resize': the whole image; ``vitpe.data.pipeline``), folders of
    clips resized whole; both on the checkpoint's validation split (``data`` given: that folder's val/, else all of
    it, unless it is the checkpoint's own training folder: then its validation split; ``pipeline.eval_spec``), with
    its classes, ``samples`` images (clips) drawn at random. Several protocols (``protocol`` a sequence; image
    folders only): one row each, labelled '<label> (<protocol>)'.

    ``diagnostics``: also the attention entropy and distance per layer (``Record.diagnostics``), from a
    second, untimed pass over the first ``diagnostic_samples`` images (attention then computes its
    probabilities explicitly, which would distort the timing).

    ``cache``: a dict that keeps the rendered test images across calls (``vitpe.parallel.cached_sweep``); by default
    they are made once per call."""
    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    for p in protocols:
        check_protocol(p)
    resolutions = sorted(int(r) for r in resolutions)
    models = [load_model(p, device) for p in checkpoints]
    for path, (model, ckpt) in zip(checkpoints, models):
        if frames and model.patch_embed.rank != 3:
            raise ValueError(f"frame counts {list(frames)} apply to video checkpoints; {path} holds an image model")
        check_resolutions(model, resolutions, clip_frames(model, frames))
        check_protocols_apply(protocols, data or ckpt['data'], model.patch_embed.rank == 3)
    cache = {} if cache is None else cache
    named = [ResolutionStrategy.parse(s).name for s in strategies if s != 'all']  # bad names raise here
    jobs = []
    for i, (path, (model, ckpt)) in enumerate(zip(checkpoints, models)):
        allowed = applicable_strategies(model)
        chosen = list(allowed) if 'all' in strategies else []
        chosen += [s for s in named if s not in chosen and all(p in allowed for p in s.split('+'))]
        jobs += [(i, path, model, ckpt, s, r, f) for s in chosen for f in clip_frames(model, frames)
                 for r in resolutions]
    jobs = [(protocol,) + job for protocol in protocols for job in jobs]  # protocols outermost: one row each
    records = []
    for protocol, i, path, model, ckpt, strategy, res, f in tqdm(jobs, desc='sweep', disable=not progress):
        images, targets = eval_images(cache, data or ckpt['data'], ckpt, res, f, samples, protocol, data)
        with PeakMemory(device) as mem:
            m = evaluate(model, tensor_batches(images, targets, batch_size), device, strategy=strategy)
        if diagnostics:
            part = slice(0, diagnostic_samples)
            m['diagnostics'] = evaluate(model, tensor_batches(images[part], targets[part], batch_size), device,
                                        strategy=strategy, diagnostics=True)['diagnostics']
        label = labels[i] if labels else os.path.basename(os.path.dirname(os.path.abspath(path)))
        label += f' ({protocol})' if len(protocols) > 1 else ''
        records.append(Record(checkpoint=path, label=label, model=ckpt['model_name'],
                              scheme=getattr(model.pos_enc, 'name', '?'), train_res=int(ckpt['img_size']), res=res,
                              strategy=strategy, acc=m['acc'], loss=m['loss'], n=m['n'],
                              imgs_per_s=m['n'] / m['seconds'], peak_mem_mb=mem.mb, device=str(device),
                              seed=None if seeds is None else seeds[i], protocol=protocol,
                              diagnostics=m.get('diagnostics'), frames=f,
                              train_frames=model.patch_embed.img_size[0] if f else None))
    return records


def check_protocols_apply(protocols: Sequence[str], spec: str, video: bool) -> None:
    """Evaluation protocols other than 'crop' (the default) apply to image folders only: built-in data is rendered
    at each size and clips are resized whole, so 'resize' there raises ValueError (before anything is swept)."""
    other = [p for p in protocols if p != 'crop']
    if other and (builtin_kind(spec) or video):
        holds = 'built-in data (rendered at each size)' if builtin_kind(spec) else 'clips (resized whole)'
        raise ValueError(f"--protocol {' '.join(other)} applies to image folders; {spec!r} holds {holds}")


def sweep_axis(records: Iterable[Record]) -> str:
    """What the table and plot run along: 'frames' when the records hold several frame counts, else 'res'."""
    return 'frames' if len({r.frames for r in records}) > 1 else 'res'


def eval_images(cache: Dict[tuple, tuple], spec: str, ckpt, res: int, frames: Optional[int], samples: int,
                protocol: str, data: Optional[str]) -> tuple:
    """(images, labels) of ``spec`` at ``res`` (and ``frames``), made once per sweep: built-in data its test split,
    folders (of images or clips) their checkpoint's validation split or ``data``, images through the checkpoint's
    evaluation transform under ``protocol``."""
    how = () if builtin_kind(spec) else eval_spec(ckpt, protocol, data)
    key = (spec, res, frames, samples) + how
    if key not in cache:
        cache[key] = materialize(eval_dataset(spec, (frames, res, res) if frames else res, samples, how))
    return cache[key]


def _series(records: Iterable[Record]) -> Dict[tuple, Dict[int, Record]]:
    """(label, strategy) -> {x: record}, x along ``sweep_axis``; a frame sweep at several frame sizes has one
    series per size (the label gets '@<res>px')."""
    records = list(records)
    axis = sweep_axis(records)
    several = axis == 'frames' and len({r.res for r in records}) > 1
    out: Dict[tuple, Dict[int, Record]] = {}
    for r in records:
        label = f'{r.label} @{r.res}px' if several else r.label
        out.setdefault((label, r.strategy), {})[getattr(r, axis)] = r
    return out


def _train_x(record: Record, axis: str) -> int:
    return record.train_frames if axis == 'frames' else record.train_res


def to_markdown(records: Sequence[Record]) -> str:
    """Rows: checkpoint (and strategy when not 'none'); columns: resolutions (a frame sweep: frame counts);
    cells: accuracy. The training resolution (frame count) of each row is marked with *."""
    axis = sweep_axis(records)
    xs = sorted({getattr(r, axis) for r in records})
    head = [f'{x} frames' if axis == 'frames' else str(x) for x in xs]
    lines = ['| checkpoint | scheme | strategy | train | ' + ' | '.join(head) + ' |',
             '|---|---|---|---|' + '---|' * len(xs)]
    for (label, strategy), by_x in _series(records).items():
        first = next(iter(by_x.values()))
        cells = []
        for x in xs:
            rec = by_x.get(x)
            cells.append('' if rec is None else f"{rec.acc:.3f}{'*' if x == _train_x(rec, axis) else ''}")
        lines.append(f'| {label} | {first.scheme} | {strategy} | {_train_x(first, axis)} | ' + ' | '.join(cells)
                     + ' |')
    return '\n'.join(lines) + '\n'


def flat_row(row) -> Dict[str, object]:
    """A dataclass row as CSV cells: None blank; a dict of per-layer lists (``Record.diagnostics``) as
    columns <name>_l0, <name>_l1, ... and <name>_mean."""
    out: Dict[str, object] = {}
    for k, v in asdict(row).items():
        if isinstance(v, dict):
            for name, per_layer in v.items():
                out.update({f'{name}_l{i}': x for i, x in enumerate(per_layer)})
                out[f'{name}_mean'] = sum(per_layer) / len(per_layer)
        elif k != 'diagnostics':  # no diagnostics: no columns
            out[k] = '' if v is None else v
    return out


def write_csv(records: Sequence, path: str, header: Optional[str] = None) -> None:
    """Records (or any dataclass rows, e.g. the summary's) as a CSV; None is written blank; ``header``: lines
    written first as ``# `` comments (definitions of the columns)."""
    rows = [flat_row(r) for r in records]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, 'w', newline='') as f:
        for line in (header or '').splitlines():
            f.write(f'# {line}\n')
        w = csv.DictWriter(f, fieldnames=fields, restval='')
        w.writeheader()
        w.writerows(rows)


# what a plot's x axis is named along each ``sweep_axis``: (x label, training marker, its title's ending)
AXIS_NAMES = {'res': ('test resolution (pixels)', 'training resolution', 'test resolution'),
              'frames': ('test frames', 'training frames', 'test frames')}


def axis_names(axis: str, title: str) -> tuple:
    """(title, plot keywords) of a plot along ``axis``: ``title`` (written for resolution) ends in 'test frames'
    for a frame sweep."""
    xlabel, train_name, along = AXIS_NAMES[axis]
    return title.replace('test resolution', along), dict(xlabel=xlabel, train_name=train_name)


def plot(records: Sequence[Record], path: str, title: str = 'Accuracy against test resolution') -> None:
    """Accuracy against resolution (frames): one colour per checkpoint, one line style per strategy; the
    training resolution of each line is a large marker and a dotted vertical line."""
    axis = sweep_axis(records)
    lines = {key: (_train_x(next(iter(by_x.values())), axis), {x: (r.acc, None, None) for x, r in by_x.items()})
             for key, by_x in _series(records).items()}
    title, names = axis_names(axis, title)
    plot_lines(lines, path, title, **names)


def plot_lines(lines: Dict[tuple, tuple], path: str, title: str = 'Accuracy against test resolution',
               xlabel: str = 'test resolution (pixels)', train_name: str = 'training resolution',
               ylabel: str = 'accuracy') -> None:
    """``lines``: (label, strategy) -> (train_res, {res: (value, low, high)}); where low and high are
    given, a shaded band between them (the spread over seeds) is drawn around the line."""
    plot_panels({ylabel: lines}, path, title, xlabel, train_name)


def line_look(index: int) -> tuple:
    """The colour and marker of the ``index``-th checkpoint of a plot: tab20's 20 colours, then again with the
    next marker, so that up to 100 checkpoints look different."""
    import matplotlib
    return matplotlib.colormaps['tab20'](index % 20), 'osD^v'[index // 20 % 5]


LEGEND_ROWS = 28


def plot_panels(panels: Dict[str, Dict[tuple, tuple]], path: str, title: str,
                xlabel: str = 'test resolution (pixels)', train_name: str = 'training resolution') -> None:
    """One panel per y quantity (``panels``: y label -> ``lines`` as in ``plot_lines``) against the test
    resolution, side by side, with one legend: one colour per checkpoint, one line style per strategy; the
    training resolution of each line is a large marker and a dotted vertical line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = list(dict.fromkeys(key for lines in panels.values() for key in lines))
    labels = list(dict.fromkeys(label for label, _ in keys))
    strategies = list(dict.fromkeys(strategy for _, strategy in keys))
    styles = ['-', '--', ':', '-.', (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 1, 2))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 + 6 * len(panels), 6), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels.items()):
        train_sizes = set()
        for (label, strategy), (tr, by_res) in lines.items():
            xs = sorted(by_res)
            colour, marker = line_look(labels.index(label))
            style = styles[strategies.index(strategy) % len(styles)]
            name = label if strategy == 'none' else f'{label} [{strategy}]'
            ax.plot(xs, [by_res[x][0] for x in xs], marker=marker, markersize=3, color=colour, linestyle=style,
                    linewidth=2 if strategy == 'none' else 1.2, label=name)
            banded = [x for x in xs if by_res[x][1] is not None]
            if banded:
                ax.fill_between(banded, [by_res[x][1] for x in banded], [by_res[x][2] for x in banded],
                                color=colour, alpha=0.15, linewidth=0)
            train_sizes.add(tr)
            if tr in by_res:
                ax.plot([tr], [by_res[tr][0]], marker=marker, markersize=7, color=colour)
        for tr in train_sizes:
            ax.axvline(tr, color='gray', linestyle=':', linewidth=1)
            ax.annotate(train_name, (tr, 0.01), xycoords=('data', 'axes fraction'), color='gray',
                        fontsize=8, xytext=(3, 0), textcoords='offset points')
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    handles, names = axes[0][0].get_legend_handles_labels()
    # LEGEND_ROWS entries a column, the figure saved out to the legend's edge (a study's 40+ lines were cut off)
    axes[0][-1].legend(handles, names, fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5),
                       ncol=max(1, -(-len(handles) // LEGEND_ROWS)))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)


def write_results(records: Sequence[Record], folder: str) -> Dict[str, str]:
    """``results.csv``, ``results.md``, ``resolution.png``, and ``diagnostics.png`` when the records have
    diagnostics."""
    from .summary import plot_diagnostics, summarize  # summary builds on this module
    os.makedirs(folder, exist_ok=True)
    paths = {'csv': os.path.join(folder, 'results.csv'), 'md': os.path.join(folder, 'results.md'),
             'png': os.path.join(folder, 'resolution.png')}
    write_csv(records, paths['csv'], header=DIAGNOSTICS_HEADER if records[0].diagnostics else None)
    with open(paths['md'], 'w') as f:
        f.write(to_markdown(records))
    plot(records, paths['png'])
    if records[0].diagnostics:
        paths['diagnostics'] = os.path.join(folder, 'diagnostics.png')
        plot_diagnostics(summarize(records), paths['diagnostics'])
    return paths


def read_csv(path: str) -> List[Dict[str, str]]:
    """The rows of a CSV written by ``write_csv`` (its ``# `` header lines skipped)."""
    with open(path, newline='') as f:
        return list(csv.DictReader(line for line in f if not line.startswith('#')))
