"""Independent jobs (the runs of a study, their sweeps) in worker processes, each with a fixed number of torch
threads.

Small models use a few cores better as several one-thread processes than as one process with several threads
(two one-thread runs of the study's micro ViT side by side make about 1.4x the updates per second of one
two-thread run on a 2-core machine). A job's numbers depend on its thread count (the order of float sums), never on how many jobs run beside it, so the
thread count belongs to the recipe and the number of jobs to the machine.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

_WORKER_CACHE: Dict[tuple, Any] = {}  # test images rendered once per worker process, for every sweep it runs


def default_jobs(threads: int) -> int:
    """As many jobs as the CPUs this process may use hold ``threads`` threads each (at least one)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, cpus // max(1, threads))


@contextmanager
def torch_threads(threads: int):
    """``torch.set_num_threads(threads)`` for the block, then the previous count again."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_worker(threads: int, parent: int) -> None:
    """Pool initializer: the thread count, and on Linux the end of the worker with its parent (PR_SET_PDEATHSIG),
    so that a study killed by a signal leaves no worker training a run the next invocation resumes."""
    torch.set_num_threads(threads)
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)


def _call(job: Tuple[int, Callable, Any, tuple]) -> Tuple[int, Any]:
    index, fn, item, catch = job
    try:
        return index, fn(item)
    except catch as e:  # an expected failure of one job: its result, the others go on
        return index, e


def run_jobs(fn: Callable, items: Sequence, jobs: int, threads: int, desc: str, unit: str,
             label: Optional[Callable[[Any], str]] = None, catch: Tuple[type, ...] = ()) -> Iterator[Tuple[int, Any]]:
    """Yield ``(index, fn(items[index]))`` as each finishes, with a progress bar over ``items``; ``jobs`` worker
    processes (spawned: ``fn`` must be importable) with ``threads`` torch threads each, or this process when
    ``jobs`` is 1. An exception of a type in ``catch`` is yielded as the job's result (the other jobs go on);
    any other ends them all."""
    if jobs < 1 or threads < 1:
        raise ValueError(f"jobs and threads must be at least 1; got jobs={jobs}, threads={threads}")
    bar = tqdm(total=len(items), desc=desc, unit=unit, smoothing=0)  # time left from the mean rate so far
    try:
        if jobs == 1 or len(items) <= 1:
            with torch_threads(threads):
                for index, item in enumerate(items):
                    if label:
                        bar.set_postfix_str(label(item))
                    yield _call((index, fn, item, catch))
                    bar.update()
        else:
            context = multiprocessing.get_context('spawn')
            with context.Pool(min(jobs, len(items)), initializer=_start_worker,
                              initargs=(threads, os.getpid())) as pool:
                for index, result in pool.imap_unordered(_call, [(i, fn, item, catch) for i, item in enumerate(items)]):
                    if label:
                        bar.set_postfix_str(f'finished {label(items[index])}')
                    yield index, result
                    bar.update()
                pool.close()  # all done: let the workers exit and the pool free its semaphores
                pool.join()
    finally:
        bar.close()
        _WORKER_CACHE.clear()  # images cached in this process (jobs = 1) live only as long as the jobs


def cached_sweep(kwargs: Dict[str, Any]):
    """``vitpe.eval.sweep(**kwargs)`` with this process's image cache: a worker renders each size once."""
    from vitpe.eval.sweep import sweep
    return sweep(**kwargs, cache=_WORKER_CACHE)
