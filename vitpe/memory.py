"""Peak memory of a piece of code, one way for the sweep and the benchmarks.

    with PeakMemory(device) as mem:
        model(x)
    mem.mb        # the largest rise above the level at entry, in MiB
    mem.measure   # 'cuda_max_allocated', 'mallinfo2' or 'ru_maxrss'

- CUDA: ``torch.cuda.max_memory_allocated`` (peak stats reset at entry) above what was allocated at entry.
- CPU: the bytes glibc's malloc has handed out and not taken back (``mallinfo2``: heap ``uordblks`` plus
  mmapped ``hblkhd``), sampled by a thread every ``interval`` seconds and once at exit. Unlike the
  resident set, memory freed but kept by the allocator does not count, so measurements in one process
  do not hide one another.
- CPU without ``mallinfo2`` (not glibc, or glibc before 2.33): the process's peak resident set
  (``ru_maxrss``) above the resident set at entry, with a warning: it only sees a rise above the
  process's earlier peak, so measure one thing per fresh process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
import threading
import time
import warnings
from typing import Callable, Optional

import torch

MIB = 2 ** 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                 'keepcost')]


def _mallinfo2() -> Optional[Callable[[], _MallInfo2]]:
    """glibc's ``mallinfo2``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def heap_in_use() -> int:
    """Bytes malloc has handed out and not taken back (needs glibc's mallinfo2)."""
    if _MALLINFO2 is None:
        raise RuntimeError("glibc mallinfo2 is not available in this C library")
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


def resident_mb() -> float:
    """The process's resident set now, MiB (Linux ``/proc/self/statm``; elsewhere its peak so far)."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / MIB
    except OSError:
        return peak_resident_mb()


def peak_resident_mb() -> float:
    """The process's peak resident set so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == 'darwin' else peak / 1024


class PeakMemory:
    """Context manager: the largest rise of memory in use during the block, above the level at entry
    (``mb``, MiB), measured as ``measure`` says (see the module's docstring)."""

    def __init__(self, device=torch.device('cpu'), interval: float = 0.0005):
        self.device = torch.device(device)
        self.interval = interval
        if self.device.type == 'cuda':
            self.measure = 'cuda_max_allocated'
        elif _MALLINFO2 is not None:
            self.measure = 'mallinfo2'
        else:
            self.measure = 'ru_maxrss'
            warnings.warn("glibc mallinfo2 is not available: CPU peak memory falls back to the peak resident "
                          "set (ru_maxrss), which only sees a rise above the process's earlier peak")
        self.base = self.peak = 0.0

    def __enter__(self) -> 'PeakMemory':
        if self.measure == 'cuda_max_allocated':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = self.peak = torch.cuda.memory_allocated(self.device)
        elif self.measure == 'mallinfo2':
            self.base = self.peak = heap_in_use()
            self._running = True
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        else:
            self.base = self.peak = resident_mb() * MIB
        return self

    def _poll(self) -> None:
        while self._running:
            self.peak = max(self.peak, heap_in_use())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.measure == 'cuda_max_allocated':
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.measure == 'mallinfo2':
            self._running = False
            self._thread.join()
            self.peak = max(self.peak, heap_in_use())
        else:
            self.peak = max(self.base, peak_resident_mb() * MIB)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / MIB


def peak_memory_mb(fn: Callable[[], object], device=torch.device('cpu')) -> float:
    """The peak rise of memory while ``fn()`` runs, MiB (``PeakMemory``)."""
    with PeakMemory(device) as mem:
        fn()
    return mem.mb
