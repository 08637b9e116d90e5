"""Attention diagnostics beside accuracy: the entropy of each layer's attention and its mean distance.

For every layer, averaged over images, heads and query rows:

- ``entropy``: H_i = -sum_j p_ij log p_ij over all N keys of query row i (nats), every query row
  (prefix tokens included); ``entropy_norm`` = H_i / log N, so 1 is uniform attention over the N tokens
  and 0 attention to one token. A collapse above the training size shows as the normalised entropy rising
  towards 1 as the grid grows ("attention dilution").
- ``distance``: the mean attention distance in patches (Dosovitskiy et al., 2021, fig. 7, in patch units):
  for each patch query i, sum_j p_ij ||x_i - x_j|| / sum_j p_ij over the patch keys j (prefix tokens have no
  position: their share is left out and the rest renormalised), x the patch's integer (t,) row, column.

The probabilities are observed chunk by chunk as attention computes them (``Attention.observer``) and
reduced at once, so only one (B, heads, rows, N) chunk of one layer (sized by the attention's
``bias_budget_mb``) and a few temporaries of its size (its log, the products) exist at a time; nothing of size
(B, heads, N, N) per layer, let alone (layers, B, heads, N, N), is ever held.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch

from ..layers.attention import Attention
from ..pe.common import coord_grid

DIAGNOSTICS = ('entropy', 'entropy_norm', 'distance')
DIAGNOSTICS_HEADER = """entropy_l<i>: attention entropy of layer i in nats, -sum_j p_ij log p_ij over all N keys, mean over images, heads and query rows
entropy_norm_l<i>: the same divided by log N (1 = uniform attention over the N tokens, 0 = one token)
distance_l<i>: mean attention distance of layer i in patches, sum_j p_ij |x_i - x_j| over patch keys (renormalised), patch queries
<name>_mean: the mean over the layers"""


def attention_sums(attn: torch.Tensor, grid_shape, num_prefix: int, first_row: int = 0) -> torch.Tensor:
    """Sums over the query rows ``first_row ...`` of ``attn`` (B, heads, rows, N): [entropy, entropy / log N,
    rows counted, distance, patch rows counted] (float64, on the CPU), to be added up and divided at the end."""
    p = attn.detach().float()
    n = p.shape[-1]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (B, heads, rows)
    queries = torch.arange(first_row, first_row + p.shape[-2], device=p.device)
    patch_rows = queries >= num_prefix
    coords = coord_grid(grid_shape, device=p.device)  # (P, rank), in patches
    dist = torch.cdist(coords[queries[patch_rows] - num_prefix], coords)  # (patch rows, P)
    to_patches = p[..., patch_rows, num_prefix:]
    distance = (to_patches * dist).sum(-1) / to_patches.sum(-1).clamp_min(1e-30)
    total = entropy.sum().double()
    return torch.stack([total, total / math.log(n) if n > 1 else total * 0, total.new_tensor(entropy.numel()),
                        distance.sum().double(), total.new_tensor(distance.numel())]).cpu()


def diagnostics_from_sums(sums: Dict[int, torch.Tensor]) -> Dict[str, List[float]]:
    """{'entropy' | 'entropy_norm' | 'distance': [value per layer]} from per-layer ``attention_sums`` totals."""
    s = [sums[i] for i in sorted(sums)]
    return {'entropy': [float(v[0] / v[2]) for v in s], 'entropy_norm': [float(v[1] / v[2]) for v in s],
            'distance': [float(v[3] / v[4]) if v[4] else float('nan') for v in s]}


class AttentionProbe:
    """Context manager: while active, every ``Attention`` of ``model`` reports its probabilities here.

    ``result()`` gives {'entropy' | 'entropy_norm' | 'distance': [value per layer]} averaged over everything
    observed since the probe was entered."""

    def __init__(self, model: torch.nn.Module):
        self.attentions = [m for m in model.modules() if isinstance(m, Attention)]
        if not self.attentions:
            raise ValueError(f"{type(model).__name__} has no vitpe Attention modules to observe")
        self.sums: Dict[int, torch.Tensor] = {}

    def __enter__(self) -> 'AttentionProbe':
        for m in self.attentions:
            m.observer = self.observe
        return self

    def __exit__(self, *exc) -> None:
        for m in self.attentions:
            m.observer = None

    @torch.no_grad()
    def observe(self, attn: torch.Tensor, ctx, layer: int, rows: slice) -> None:
        sums = attention_sums(attn, ctx.grid.shape, ctx.grid.num_prefix, rows.start or 0)
        self.sums[layer] = self.sums[layer] + sums if layer in self.sums else sums

    def result(self) -> Dict[str, List[float]]:
        return diagnostics_from_sums(self.sums)
