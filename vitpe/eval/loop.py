"""The evaluation loop, one for training's validation and for the resolution sweep."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .diagnostics import AttentionProbe
from .strategies import apply_strategy


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[Tuple[torch.Tensor, ...]]:
    """(images, labels) in slices of ``batch_size``."""
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size], labels[i:i + batch_size]


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, device: torch.device, amp: bool = False, world: int = 1,
             strategy: Optional[str] = None, diagnostics: bool = False) -> Dict[str, Any]:
    """Mean cross-entropy ``loss``, accuracy ``acc``, count ``n`` and ``seconds`` of ``model`` (put in eval
    mode) over ``batches`` of (images, labels, ...); ``None`` batches (nothing readable) are skipped.

    ``strategy``: a resolution strategy applied for the loop (``vitpe.eval.apply_strategy``; None: the
    model as it is). ``amp``: bf16 autocast. ``world`` > 1: sums are all-reduced over the processes.
    ``diagnostics``: also the attention entropy and distance per layer (``vitpe.eval.diagnostics``), under
    the key 'diagnostics'; attention then computes its probabilities explicitly (slower)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    context = apply_strategy(model, strategy) if strategy is not None else contextlib.nullcontext()
    probe = AttentionProbe(model) if diagnostics else contextlib.nullcontext()
    with context, probe:
        _synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            if batch is None:
                continue
            x, y = batch[0].to(device), batch[1].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            totals[0] += F.cross_entropy(out.float(), y, reduction='sum')
            totals[1] += (out.argmax(-1) == y).sum()
            totals[2] += y.numel()
        _synchronize(device)
        seconds = time.perf_counter() - start
    if world > 1:
        dist.all_reduce(totals)
    n = max(totals[2].item(), 1)
    result = {'loss': totals[0].item() / n, 'acc': totals[1].item() / n, 'n': int(totals[2].item()),
              'seconds': seconds}
    if diagnostics:
        result['diagnostics'] = probe.result()
    return result
