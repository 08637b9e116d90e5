"""How fast each run learned its task: from the training log (``log.jsonl``, one row per epoch with the
number of updates and the validation accuracy at the training resolution), the final accuracy and the
number of updates after which it first reached a threshold (0.9), summarised over seeds.

A label is said to have *learned* the task when its mean final validation accuracy over the seeds is at
least ``LEARNED`` (0.95); a study's resolution table is only read for labels that did."""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REACHED = 0.9
LEARNED = 0.95


@dataclass
class LearningRecord:
    """One run: its final validation accuracy, the first update count at which it reached ``REACHED``
    (None: never, within ``updates``) and its training time (the sum of its epochs' times, over every invocation
    that trained a part of it)."""
    label: str
    seed: int
    final_val_acc: float
    updates: int
    updates_to_reach: Optional[int]
    train_time_s: float = 0.0


def learning_record(label: str, seed: int, log_path: str, reached: float = REACHED) -> LearningRecord:
    """The record of one run from its ``log.jsonl``."""
    if not os.path.exists(log_path):
        raise FileNotFoundError(f"no training log at {log_path}: train the run first")
    rows = [json.loads(line) for line in open(log_path) if line.strip()]
    if not rows:
        raise ValueError(f"the training log {log_path} has no epochs")
    first = next((r['updates'] for r in rows if r['val_acc'] >= reached), None)
    return LearningRecord(label, seed, rows[-1]['val_acc'], rows[-1]['updates'], first,
                          sum(r.get('epoch_time_s', 0.0) for r in rows))


def learning_summary(records: Sequence[LearningRecord]) -> Dict[str, Tuple[float, Optional[float], bool, List]]:
    """label -> (mean final accuracy, its std over seeds (None with one), learned, updates to reach per seed)."""
    groups: Dict[str, List[LearningRecord]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)
    out = {}
    for label, group in groups.items():
        accs = [r.final_val_acc for r in group]
        mean = statistics.fmean(accs)
        out[label] = (mean, statistics.stdev(accs) if len(accs) > 1 else None, mean >= LEARNED,
                      [r.updates_to_reach for r in group])
    return out


def learning_markdown(records: Sequence[LearningRecord]) -> str:
    """One row per label: final validation accuracy at the training size (mean ± std over seeds), whether
    that mean reaches ``LEARNED``, and the updates each seed needed to reach ``REACHED`` ('>N': not within N)."""
    budget = {r.label: r.updates for r in records}
    lines = [f'| checkpoint | val acc at training size | learned (mean >= {LEARNED}) | '
             f'updates to reach {REACHED}, per seed |', '|---|---|---|---|']
    for label, (mean, std, learned, reach) in learning_summary(records).items():
        spread = '' if std is None else f' ± {std:.3f}'
        steps = ', '.join(str(u) if u is not None else f'>{budget[label]}' for u in reach)
        lines.append(f"| {label} | {mean:.3f}{spread} | {'yes' if learned else 'no'} | {steps} |")
    return '\n'.join(lines) + '\n'
