"""vitpe.memory: the one peak-memory helper (sweep and benchmarks) sees a transient allocation, not what
was held before, and falls back to the resident set, saying so, where mallinfo2 is missing."""
import time

import pytest
import torch

import vitpe.memory as memory
from vitpe.memory import PeakMemory, peak_memory_mb

MIB = 2 ** 20


def transient(mib: int, hold_s: float = 0.02) -> None:
    """Allocate ``mib`` MiB, keep them a moment, free them."""
    x = torch.ones(mib * MIB // 4)
    time.sleep(hold_s)
    del x


@pytest.mark.skipif(memory._MALLINFO2 is None, reason='glibc mallinfo2 is not available here')
def test_cpu_peak_is_the_transient_rise_not_what_was_held():
    held = torch.ones(100 * MIB // 4)  # allocated before: not part of the rise
    with PeakMemory() as mem:
        transient(64)
    assert mem.measure == 'mallinfo2'
    assert 63 <= mem.mb <= 70, mem.mb
    assert peak_memory_mb(lambda: None) < 4
    assert 31 <= peak_memory_mb(lambda: transient(32)) <= 38
    del held


def test_without_mallinfo2_it_falls_back_to_the_resident_set_and_says_so(monkeypatch):
    monkeypatch.setattr(memory, '_MALLINFO2', None)
    with pytest.warns(UserWarning, match='mallinfo2 is not available: CPU peak memory falls back to the peak '
                                         'resident set'):
        mem = PeakMemory()
    with mem:
        transient(8)
    assert mem.measure == 'ru_maxrss' and mem.mb >= 0  # a rise only above the process's earlier peak
    with pytest.raises(RuntimeError, match='mallinfo2 is not available'):
        memory.heap_in_use()
