#!/usr/bin/env python
"""The resolution study (README's main job): train a small model per positional scheme on the built-in
position task at a small resolution, then evaluate every one at the config's resolutions (0.5x to 5x the
training size in configs/study_position_64.yaml) with no fine-tuning, and print the tables and write the plots.

    python tools/study.py --config configs/study_position_64.yaml --output study
    python tools/study.py --schemes ape rope_mixed --output study_two     # only these schemes

A run is one (scheme, task, seed), in ``<output>/runs/<name>/seed<k>`` (name: the scheme, or
scheme-task for a control run), trained with ``TrainConfig.seed = k``. Interrupted? Run the same
command again: finished runs are kept, a run in progress resumes from its last finished epoch.

The config (YAML): ``task`` (data of the main runs), ``model`` (a name with ``{scheme}`` in it),
``model_kwargs``, ``schemes`` (``all``: every registered scheme, ``vitpe.list_pos_encodings()``; or a
list), ``controls`` (task: [schemes] trained on another task), ``train`` (``TrainConfig`` fields),
``resolutions``, ``eval_samples``, ``strategy_schemes`` (swept with every strategy that applies) and
``seeds`` (a number n: seeds 0..n-1, default 3; or a list of seeds), ``diagnostics`` (attention entropy and
distance, default on) over the first ``diagnostic_samples`` test images (default 256), ``threads`` (torch
threads per run, default 1: part of the recipe, since float results depend on it); video studies add ``frames``
(the frame counts to test; configs/study_video_order_8x32.yaml). ``results.csv`` keeps every seed's
numbers; ``summary.csv`` and the table give mean, standard deviation (ddof=1) and number of seeds per cell.

``--jobs N`` trains (and evaluates) N runs at once, each in its own process with ``threads`` threads (default:
the CPU count // threads). Small models use two cores better as two one-thread runs than as one two-thread
run (about 1.4x the updates per second on this 2-core machine); the numbers do not depend on N. Throughput
columns of the CSV (imgs_per_s) are then measured on a shared CPU.
"""
import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import timm
from tqdm import tqdm

import vitpe
from vitpe.checkpoint import load_checkpoint
from vitpe.config import TrainConfig, read_yaml
from vitpe.errors import TrainingError
from vitpe.eval import STRATEGIES, summarize, summary_markdown, sweep, write_csv, write_summary
from vitpe.eval.learning import learning_markdown, learning_record, learning_summary
from vitpe.eval.stored import read_stored, sweep_key, write_stored
from vitpe.parallel import cached_sweep, default_jobs, run_jobs
from vitpe.training import train

REQUIRED = ('task', 'model', 'schemes', 'train', 'resolutions', 'eval_samples')
OPTIONAL = ('model_kwargs', 'controls', 'strategy_schemes', 'seeds', 'diagnostics', 'diagnostic_samples', 'frames',
            'threads')
DEFAULT_SEEDS = 3


@dataclass
class StudyRun:
    name: str  # folder under <output>/runs (with seed<k> below it) and row label
    scheme: str
    task: str
    seed: int
    config: TrainConfig


def load_study(path: str) -> Dict[str, Any]:
    """A study config; unknown or missing keys raise ValueError naming them."""
    study = read_yaml(path)
    if 'model_prefix' in study:  # 0.1.0's keys: model_prefix + model (the model arguments)
        warnings.warn(f"study config {path!r}: 'model_prefix' and a 'model' dict are deprecated; write "
                      "model: <name with {scheme}> and model_kwargs: {...}", FutureWarning, 2)
        study['model_kwargs'] = study.get('model') or {}
        study['model'] = f"{study.pop('model_prefix')}_{{scheme}}_224"
    unknown = sorted(set(study) - set(REQUIRED) - set(OPTIONAL))
    missing = [k for k in REQUIRED if k not in study]
    if unknown or missing:
        raise ValueError(f"study config {path!r}: unknown keys {unknown}, missing keys {missing}")
    if '{scheme}' not in study['model']:
        raise ValueError(f"study config {path!r}: model {study['model']!r} must contain {{scheme}}")
    threads = study.setdefault('threads', 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"study config {path!r}: threads must be a positive integer (torch threads per run); "
                         f"got {threads!r}")
    study['source'] = path
    return study


def zoo_entries() -> List[str]:
    """Every model entry of every registered scheme (``ZooEntry.suffix``: 'irpe' and 'irpe_ape' are two)."""
    return [e.suffix for name in vitpe.list_pos_encodings() for e in vitpe.pe.get_pos_encoding_class(name).zoo]


def resolve_schemes(spec, model: str) -> List[str]:
    """``'all'``: every model entry of every registered scheme (``zoo_entries``) that has a model of the study's
    size (``model``, a name with ``{scheme}``: RoPE-ViT's rope_*_ape entries have small and base models only);
    a list: those, each checked."""
    registered = zoo_entries()
    if spec == 'all':
        models = set(timm.list_models('vitpe_*'))
        return [s for s in registered if model.format(scheme=s) in models]
    unknown = [s for s in spec if s not in registered]
    if isinstance(spec, str) or unknown:
        raise ValueError(f"schemes must be 'all' or a list of model entries of registered schemes {registered}; "
                         f"unknown: {unknown or spec!r}")
    return list(spec)


def resolve_seeds(spec, source: str = 'study config') -> List[int]:
    """``seeds``: a positive number n (seeds 0..n-1) or a non-empty list of distinct integer seeds."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if is_int(spec) and spec > 0:
        return list(range(spec))
    if isinstance(spec, list) and spec and all(is_int(v) for v in spec) and len(set(spec)) == len(spec):
        return list(spec)
    raise ValueError(f"{source}: seeds must be a positive number of seeds or a list of distinct integer seeds; "
                     f"got {spec!r}")


def plan_runs(study: Dict[str, Any], output: str, schemes: Optional[List[str]] = None) -> List[StudyRun]:
    """One run per scheme and seed on the study's task, then the control runs; each with its ``TrainConfig``."""
    seeds = resolve_seeds(study.get('seeds', DEFAULT_SEEDS), f"study config {study['source']!r}")
    pairs = [(s, s, study['task']) for s in resolve_schemes(schemes or study['schemes'], study['model'])]
    for task, names in (study.get('controls') or {}).items():
        pairs += [(f"{s}-{task.split(':')[-1]}", s, task) for s in resolve_schemes(names, study['model'])]
    missing = sorted({study['model'].format(scheme=s) for _, s, _ in pairs} - set(timm.list_models('vitpe_*')))
    if missing:
        raise ValueError(f"study config {study['source']!r}: models {missing} are not registered (the zoo entries "
                         f"a scheme declares name its models, at the sizes they list); list schemes that have one")
    runs = []
    for name, scheme, task in pairs:
        for seed in seeds:
            values = {**study['train'], 'model': study['model'].format(scheme=scheme),
                      'model_kwargs': dict(study.get('model_kwargs') or {}), 'data': task, 'seed': seed,
                      'output': os.path.join(output, 'runs', name, f'seed{seed}'), 'resume': 'auto', 'quiet': True}
            config = TrainConfig.from_dict(values, source=f"study config {study['source']!r} (train)")
            runs.append(StudyRun(name, scheme, task, seed, config))
    return runs


NOT_RECIPE = ('output', 'resume', 'quiet', 'workers')  # TrainConfig fields that do not change what a run learns


def run_done(run: StudyRun) -> bool:
    """Whether the run finished its epochs; a run trained (or begun) with another recipe raises ValueError
    naming the fields that differ, rather than being kept, or resumed under a recipe it did not start with."""
    path = os.path.join(run.config.output, 'last.pth')
    if not os.path.exists(path):
        return False
    ckpt = load_checkpoint(path)
    stored, wanted = ckpt.get('config') or {}, run.config.to_dict()
    changed = [f"{k}: {stored[k]!r} there, {wanted[k]!r} now" for k in wanted
               if k not in NOT_RECIPE and k in stored and stored[k] != wanted[k]]
    if changed:
        raise ValueError(f"{run.config.output} holds a run of another recipe ({'; '.join(changed)}): delete it to "
                         f"train it again, or give another --output")
    return ckpt['epoch'] + 1 >= run.config.epochs


def train_all(runs: List[StudyRun], started: float, jobs: int, threads: int) -> List[StudyRun]:
    """Train every run not finished yet (an interrupted one resumes), ``jobs`` at a time; the bar's estimate of
    the time left counts the runs still to train (they cost about the same). A run that stops with a
    ``TrainingError`` (a non-finite loss) does not stop the others: the runs that failed are returned."""
    todo = [run for run in runs if not run_done(run)]
    if len(todo) < len(runs):
        tqdm.write(f"{len(runs) - len(todo)} of {len(runs)} runs already trained: kept")
    done = run_jobs(train, [run.config for run in todo], jobs, threads, 'study: training', 'run',
                    label=lambda c: f'{c.model} seed {c.seed}', catch=(TrainingError,))
    failed = []
    for index, summary in done:
        run = todo[index]
        if isinstance(summary, TrainingError):
            failed.append(run)
            tqdm.write(f"{run.name} seed {run.seed}: failed: {summary}")
            continue
        tqdm.write(f"{run.name} seed {run.seed}: val_acc {summary['val_acc']:.3f} at {run.config.img_size} px "
                   f"({(time.time() - started) / 60:.1f} min so far)")
    return failed


def evaluate_all(study: Dict[str, Any], runs: List[StudyRun], jobs: int, threads: int) -> list:
    """Every run's best checkpoint at every resolution; ``strategy_schemes`` also with every strategy. One job
    per checkpoint and strategy set; the records come back in the order of the runs."""
    common = dict(resolutions=study['resolutions'], samples=study['eval_samples'], progress=False,
                  diagnostics=bool(study.get('diagnostics', True)), frames=study.get('frames'),  # video: frame counts
                  diagnostic_samples=int(study.get('diagnostic_samples', 256)))
    tasks = [dict(common, checkpoints=[os.path.join(r.config.output, 'best.pth')], strategies=['none'],
                  labels=[r.name], seeds=[r.seed], store=os.path.join(r.config.output, 'sweep_none.json'))
             for r in runs]
    # every single strategy but 'none' (swept above); those that do not apply are skipped per scheme
    others = [s for s in STRATEGIES if s != 'none']
    tasks += [dict(task, strategies=others, store=os.path.join(r.config.output, 'sweep_strategies.json'))
              for task, r in zip(list(tasks), runs)
              if r.scheme in (study.get('strategy_schemes') or []) and r.task == study['task']]
    def label(task):
        return f"{task['labels'][0]} seed {task['seeds'][0]}" + (' strategies' if task['strategies'] == others else '')

    stores = [task.pop('store') for task in tasks]
    keys = [sweep_key(task) for task in tasks]
    records: List[Optional[list]] = [read_stored(path, key) for path, key in zip(stores, keys)]
    todo = [i for i, stored in enumerate(records) if stored is None]
    if len(todo) < len(tasks):
        tqdm.write(f"{len(tasks) - len(todo)} of {len(tasks)} sweeps already done (same sweep of the same "
                   "checkpoint): kept")
    for index, result in run_jobs(cached_sweep, [tasks[i] for i in todo], jobs, threads, 'study: sweep',
                                  'checkpoint', label=label):
        i = todo[index]
        write_stored(stores[i], keys[i], result)  # as each finishes: an interrupted study keeps it
        records[i] = result
    return [r for part in records for r in part]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', default='configs/study_position_64.yaml')
    ap.add_argument('--output', default='study')
    ap.add_argument('--schemes', nargs='+', help='override the config: only these schemes')
    ap.add_argument('--jobs', type=int, help='runs trained and evaluated at once, each in its own process with the '
                    "config's threads (default: CPU count // threads); the numbers do not depend on it")
    args = ap.parse_args(argv)
    study = load_study(args.config)
    runs = plan_runs(study, args.output, args.schemes)
    threads = study['threads']
    jobs = default_jobs(threads) if args.jobs is None else args.jobs
    if jobs < 1:
        ap.error(f'--jobs must be at least 1; got {jobs}')
    started = time.time()
    failed = train_all(runs, started, jobs, threads)
    runs = [run for run in runs if run not in failed]  # the tables hold the runs that trained
    if not runs:
        print(f"every run failed: see the messages above; {args.output}/runs keeps each one's last good epoch")
        return 1
    records = evaluate_all(study, runs, jobs, threads)
    learning = [learning_record(r.name, r.seed, os.path.join(r.config.output, 'log.jsonl')) for r in runs]
    unlearned = [label for label, (_, _, learned, _) in learning_summary(learning).items() if not learned]
    paths = write_summary(records, args.output, unlearned)
    paths['learning.csv'] = os.path.join(args.output, 'learning.csv')
    write_csv(learning, paths['learning.csv'])
    n_seeds = len({r.seed for r in runs})
    n_main = len({r.name for r in runs if r.task == study['task']})
    n_controls = len({r.name for r in runs}) - n_main
    train_min = sum(r.train_time_s for r in learning) / 60
    trained = f"{runs[0].config.img_size} px" + (f", {runs[0].config.num_frames} frames" if study.get('frames') else '')
    print(f"\nResolution study: {n_main} schemes on {study['task']}, trained at {trained}, "
          f"{n_controls} control runs, {n_seeds} seeds each; this invocation {(time.time() - started) / 60:.1f} min; "
          f"the runs' training time summed over every invocation {train_min:.1f} min ({jobs} at once now)\n")
    print(learning_markdown(learning))
    print(summary_markdown(summarize(records), unlearned))
    print('wrote ' + ', '.join(paths.values()))
    if failed:
        print(f"\n{len(failed)} runs failed and are not in the tables: "
              + ', '.join(f'{r.name} seed {r.seed}' for r in failed)
              + " (the messages above say why; the command again retries them from their last good epoch)")
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
