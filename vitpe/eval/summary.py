"""The sweep over seeds: per-seed records in, one row per (label, strategy, resolution) out with the mean,
the sample standard deviation (ddof=1; blank with one seed), the range and the number of seeds; as a CSV,
a markdown table (cells ``mean ± std``) and a plot with a band (mean ± std) around each line."""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Sequence

from .diagnostics import DIAGNOSTICS, DIAGNOSTICS_HEADER
from .sweep import Record, axis_names, plot_lines, plot_panels, sweep_axis, write_csv


@dataclass
class SummaryRow:
    """Accuracy over the seeds of one (label, strategy, resolution); ``std`` is None with one seed."""
    label: str
    scheme: str
    strategy: str
    train_res: int
    res: int
    mean: float
    std: Optional[float]
    min: float
    max: float
    n_seeds: int
    # mean over the layers, then over the seeds (None without diagnostics): see vitpe.eval.diagnostics
    entropy_norm: Optional[float] = None
    entropy: Optional[float] = None
    distance: Optional[float] = None
    axis: str = 'res'  # 'frames': a frame sweep of video models (res and train_res then count frames)


def summarize(records: Sequence[Record]) -> List[SummaryRow]:
    """One row per (label, strategy, res), in the records' order; every record counts as one seed. A frame sweep
    (``sweep_axis``) has one row per (label, strategy, frames), its frame counts in ``res`` / ``train_res``."""
    axis = sweep_axis(records)
    train_key = 'train_frames' if axis == 'frames' else 'train_res'
    groups: Dict[tuple, List[Record]] = {}
    for r in records:
        groups.setdefault((r.label, r.strategy, getattr(r, axis)), []).append(r)
    rows = []
    for (label, strategy, res), group in groups.items():
        accs = [r.acc for r in group]
        rows.append(SummaryRow(label=label, scheme=group[0].scheme, strategy=strategy,
                               train_res=getattr(group[0], train_key), res=res, mean=statistics.fmean(accs),
                               std=statistics.stdev(accs) if len(accs) > 1 else None,
                               min=min(accs), max=max(accs), n_seeds=len(accs), axis=axis,
                               **{k: _mean_diagnostic(group, k) for k in DIAGNOSTICS}))
    return rows


def _mean_diagnostic(group: Sequence[Record], name: str) -> Optional[float]:
    """The mean over layers and then over the seeds' records; None if a record has no diagnostics."""
    if any(r.diagnostics is None for r in group):
        return None
    return statistics.fmean(statistics.fmean(r.diagnostics[name]) for r in group)


def _lines(rows: Sequence[SummaryRow]) -> Dict[tuple, tuple]:
    """(label, strategy) -> (train_res, {res: row})."""
    out: Dict[tuple, tuple] = {}
    for row in rows:
        out.setdefault((row.label, row.strategy), (row.train_res, {}))[1][row.res] = row
    return out


def _cell(row: Optional[SummaryRow]) -> str:
    if row is None:
        return ''
    spread = '' if row.std is None else f' ± {row.std:.3f}'
    return f"{row.mean:.3f}{spread}{'*' if row.res == row.train_res else ''}"


def summary_markdown(rows: Sequence[SummaryRow], unlearned: Collection[str] = ()) -> str:
    """Rows: label and strategy; columns: resolutions; cells: ``mean ± std`` over the seeds (* at the
    training resolution); the seeds column gives the number of seeds (fewest over the row's cells). Labels in
    ``unlearned`` (a study's runs that did not learn the task at the training size, ``vitpe.eval.learning``) are
    marked "(not learned)": their accuracy at other sizes says little about extrapolation."""
    resolutions = sorted({r.res for r in rows})
    frames = bool(rows) and rows[0].axis == 'frames'
    head = [f'{r} frames' if frames else str(r) for r in resolutions]
    lines = ['| checkpoint | scheme | strategy | train | seeds | ' + ' | '.join(head) + ' |',
             '|---|---|---|---|---|' + '---|' * len(resolutions)]
    for (label, strategy), (train_res, by_res) in _lines(rows).items():
        first = next(iter(by_res.values()))
        seeds = min(r.n_seeds for r in by_res.values())
        cells = [_cell(by_res.get(res)) for res in resolutions]
        name = f'{label} (not learned)' if label in unlearned else label
        lines.append(f'| {name} | {first.scheme} | {strategy} | {train_res} | {seeds} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot_summary(rows: Sequence[SummaryRow], path: str, title: str = 'Accuracy against test resolution') -> None:
    """The mean per line, with a band of mean ± std where there are several seeds."""
    lines = {key: (tr, {res: (r.mean, None if r.std is None else r.mean - r.std,
                              None if r.std is None else r.mean + r.std) for res, r in by_res.items()})
             for key, (tr, by_res) in _lines(rows).items()}
    title, names = axis_names(rows[0].axis if rows else 'res', title + ' (mean ± std over seeds)')
    plot_lines(lines, path, title, **names)


def plot_diagnostics(rows: Sequence[SummaryRow], path: str) -> None:
    """Normalised attention entropy and mean attention distance (means over layers and seeds) against the
    test resolution (a frame sweep: the test frames), one panel each."""
    quantities = {'attention entropy / log N (mean over layers)': 'entropy_norm',
                  'mean attention distance, patches (mean over layers)': 'distance'}
    panels = {ylabel: {key: (tr, {res: (getattr(r, name), None, None) for res, r in by_res.items()})
                       for key, (tr, by_res) in _lines(rows).items()}
              for ylabel, name in quantities.items()}
    title, names = axis_names(rows[0].axis if rows else 'res', 'Attention diagnostics against test resolution')
    plot_panels(panels, path, title, **names)


SUMMARY_HEADER = """a run is one (label, task, seed); label = the model entry's scheme suffix (irpe and irpe_ape differ), with -<task> for control runs
mean: mean accuracy over the seeds; std: sample standard deviation over the seeds (ddof=1, blank with one seed); min, max: their range
per-seed values: results.csv; a rerun reproduces a cell when its mean lies within 2 std of the reported mean
entropy_norm, entropy, distance: attention diagnostics, mean over layers then over seeds (see results.csv for the per-layer values)"""


def write_summary(records: Sequence[Record], folder: str, unlearned: Collection[str] = ()) -> Dict[str, str]:
    """``results.csv`` (per seed), ``summary.csv``, ``results.md`` (the summary table; ``unlearned`` labels
    marked, ``summary_markdown``), ``resolution.png`` and, when the records have diagnostics, ``diagnostics.png``."""
    os.makedirs(folder, exist_ok=True)
    names = ('results.csv', 'summary.csv', 'results.md', 'resolution.png')
    has_diagnostics = all(r.diagnostics is not None for r in records)
    paths = {name: os.path.join(folder, name) for name in names + (('diagnostics.png',) if has_diagnostics else ())}
    rows = summarize(records)
    write_csv(records, paths['results.csv'], header=DIAGNOSTICS_HEADER if has_diagnostics else None)
    write_csv(rows, paths['summary.csv'], header=SUMMARY_HEADER)
    with open(paths['results.md'], 'w') as f:
        f.write(summary_markdown(rows, unlearned))
    plot_summary(rows, paths['resolution.png'])
    if has_diagnostics:
        plot_diagnostics(rows, paths['diagnostics.png'])
    return paths
