"""iRPE, image relative position encoding (Wu et al., "Rethinking and Improving Relative Position
Encoding for Vision Transformer", ICCV 2021; microsoft/Cream ``iRPE/DeiT-with-iRPE/irpe.py``).

Every (query, key) offset falls into a bucket (``irpe_bucket_ids``); each bucket has a learned encoding.
Per block and per target:

- keys (``k``): logits_ij += b_ij, with b_ij = T[h, bucket_ij] (bias mode) or (q_i / sqrt(d)) . T[h, :, bucket_ij]
  (contextual mode, Eq. 7);
- queries (``q``): logits_ij += (k_j / sqrt(d)) . T[h, :, bucket_ji] (contextual) or T[h, bucket_ji];
- values (``v``): out_i += sum_j a_ij T_v[h, bucket_ij, :] (contextual only, Eq. 8).

Contextual encodings are computed once per bucket (q against the table, (N, buckets)) and then gathered to
(N, N); value encodings aggregate the attention per bucket first (scatter-add), then multiply by the table.
That costs N x buckets per query; where a grid has at most a quarter as many tokens as buckets (3D 'product'
has 343 buckets, a video grid of 4 x 2 x 2 tubelets 17 tokens) the table is gathered per (query, key) pair
instead (N x N per query, the straightforward form): the same numbers (tested), the faster path there
(``benchmarks/bench_irpe.py``: per pair has fewer operations from N < buckets on, but each costs more, so
the margin of 4).
Prefix tokens share one extra bucket, as the reference's ``skip`` tokens. 3D (T, H, W): the offset has a third
axis: 'product' buckets (2 beta + 1)^3 (t digit first), 'cross' a third table (for t), 'euclidean' / 'quant'
the 3D distance. At T = 1 the t offset is 0, so a 2D checkpoint inflated by ``inflate_state_dict`` gives the 2D
model's output (tested). Bucket ids depend on the offset
only: they are computed for the (2S-1)^rank offsets and looked up per pair (the offset table cached per
grid; the patch ids cached for grids up to ``cache_tokens``, else looked up per chunk of query rows).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .base import PositionalEncoding
from .common import LearnedTable, check_bool, check_choice, check_positive, coord_grid, grid_bias
from .registry import ZooEntry, register_pos_encoding

IRPE_MODES = ('bias', 'contextual')
IRPE_TARGETS = ('k', 'q', 'v', 'qk', 'kv', 'qv', 'qkv')


def piecewise_index(rel: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """iRPE's piecewise index g(x) (Wu et al. 2021, Eq. 18): round(x) for |x| <= alpha, else
    sign(x) * min(beta, round(alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha)))."""
    rel = rel.float()
    a = rel.abs()
    far = torch.sign(rel) * (alpha + torch.log(a.clamp(min=1e-12) / alpha) / math.log(gamma / alpha)
                             * (beta - alpha)).round().clamp(max=beta)
    return torch.where(a <= alpha, rel.round(), far).long()


IRPE_METHODS = ('euclidean', 'quant', 'cross', 'product')


def irpe_num_buckets(method: str, beta: float, rank: int = 2) -> int:
    """Buckets per table, without the extra prefix bucket ((2 beta + 1)^rank for product)."""
    b = int(beta)
    return (2 * b + 1) ** rank if method == 'product' else 2 * b + 1


def irpe_offset_buckets(diff: torch.Tensor, method: str, alpha: float, beta: float, gamma: float,
                        axis: Optional[int] = None) -> torch.Tensor:
    """Bucket id of each offset ``diff`` (..., rank) = query coordinates - key coordinates.

    euclidean: g(round(|d|)); quant: g(|d|^2); product: mixed-radix over axes of g(d_a) + beta;
    cross: g(d_axis) for the one ``axis`` (the caller sums one table per axis).
    Non-product ids are shifted by beta so that they start at 0, as in the reference code."""
    b = int(beta)
    if method == 'euclidean':
        return piecewise_index(diff.square().sum(-1).sqrt().round(), alpha, beta, gamma) + b
    if method == 'quant':
        return piecewise_index(diff.square().sum(-1), alpha, beta, gamma) + b
    if method == 'cross':
        return piecewise_index(diff[..., axis], alpha, beta, gamma) + b
    if method == 'product':
        ids = torch.zeros(diff.shape[:-1], dtype=torch.long, device=diff.device)
        for a in range(diff.shape[-1]):
            ids = ids * (2 * b + 1) + piecewise_index(diff[..., a], alpha, beta, gamma) + b
        return ids
    raise ValueError(f"irpe: unknown method {method!r}; expected one of {list(IRPE_METHODS)}")


def irpe_offset_lookup(shape: Sequence[int], method: str, alpha: float, beta: float, gamma: float, device=None,
                       axis: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(table, lin, centre) for ``irpe_bucket_ids``. The bucket depends on the offset only, so it is
    computed once for each of the (2S-1)^rank offsets (``table``, flat, row major). ``lin`` is each
    cell's row-major index in that offset grid; being linear in the coordinates, the offset of the pair
    (i, j) sits at table[lin[i] - lin[j] + centre]."""
    offsets = coord_grid([2 * s - 1 for s in shape], device=device) - torch.tensor(
        [s - 1 for s in shape], device=device, dtype=torch.float32)
    table = irpe_offset_buckets(offsets, method, alpha, beta, gamma, axis)
    strides = [1] * len(shape)
    for a in range(len(shape) - 2, -1, -1):
        strides[a] = strides[a + 1] * (2 * shape[a + 1] - 1)
    lin = (coord_grid(shape, device=device, dtype=torch.long) * torch.tensor(strides, device=device)).sum(-1)
    return table, lin, sum((s - 1) * st for s, st in zip(shape, strides))


def irpe_bucket_ids(shape: Sequence[int], method: str, alpha: float, beta: float, gamma: float,
                    device=None, axis: Optional[int] = None, rows: Optional[torch.Tensor] = None,
                    keys_first: bool = False, lookup: Optional[tuple] = None) -> torch.Tensor:
    """(rows, N) bucket ids of (query, key) pairs of patch tokens for an iRPE method; ``rows`` are flat
    query indices (all N when None), so large grids can be done a chunk of queries at a time. With
    ``keys_first`` the result is (N, rows): the bucket of (key j as query, query i as key), i.e. of
    the offset k_j - q_i (iRPE on queries). Ids are looked up by offset (``irpe_offset_lookup``; pass
    ``lookup`` to reuse one for the same grid, method and axis)."""
    table, lin, centre = lookup if lookup is not None else irpe_offset_lookup(
        shape, method, alpha, beta, gamma, device, axis)
    q_lin = lin if rows is None else lin[rows]
    if keys_first:
        return table[(lin + centre)[:, None] - q_lin[None, :]]
    return table[(q_lin + centre)[:, None] - lin[None, :]]


@register_pos_encoding
class IRPE(PositionalEncoding):
    """Options:
        mode: 'bias' or 'contextual' (default, the paper's best).
        method: 'euclidean', 'quant', 'cross' (one table per axis, summed) or 'product' (default).
        on: where it acts: 'k' (default), 'q', 'v' or a combination such as 'qk' or 'qkv'.
        shared_head: one table for all heads (default True) or one per head.
        ratio: alpha:beta:gamma = 1:2:8 scaled by ``ratio`` (1.9, the paper's default).
        ape: also add a learned absolute embedding (with a row for each prefix token), as the official
            DeiT-iRPE models do (zoo: ``vitpe_*_patch16_irpe_ape_224``); off in ``irpe`` alone.
        antialias: how that table is resampled (True: timm's ``resample_abs_pos_embed``, as every vitpe table;
            False: plain bicubic, as the DeiT code the official models were fine-tuned with).
        contextual_scale: 'sqrt_d' (default: the paper's and the authors' (x / sqrt(d)) . T) or 'none' (x . T),
            not the paper's: an option for studies, in which the zero-initialised contextual tables move the
            logits sqrt(d) times faster at equal update sizes (the paper's form is slow to leave chance there).
    """
    name = 'irpe'
    hooks = frozenset({'tokens', 'bias', 'value'})
    zoo = (ZooEntry('irpe'), ZooEntry('irpe_ape', dict(ape=True)))
    # grids up to this many tokens keep their patch bucket ids cached; larger ones look up the ids of each
    # row chunk on the fly, so memory stays O(chunk x N)
    cache_tokens: int = 1024
    # contextual encodings: None chooses by cost (a table gathered per pair where the grid has at most a quarter
    # as many tokens as buckets, else per bucket as the reference); True / False force one path (tests, benchmark)
    pair_gather: Optional[bool] = None

    def __init__(self, *, mode: str = 'contextual', method: str = 'product', on: str = 'k',
                 shared_head: bool = True, ratio: float = 1.9, ape: bool = False, antialias: bool = True,
                 contextual_scale: str = 'sqrt_d', **common):
        super().__init__(**common)
        check_choice(self.name, 'mode', mode, IRPE_MODES)
        check_choice(self.name, 'method', method, IRPE_METHODS)
        check_choice(self.name, 'on', on, IRPE_TARGETS)
        check_positive(self.name, 'ratio', ratio)
        check_bool(self.name, 'ape', ape)
        check_choice(self.name, 'contextual_scale', contextual_scale, ('sqrt_d', 'none'))
        self.contextual_scale = contextual_scale
        if mode == 'bias' and 'v' in on:
            raise ValueError(f"irpe: invalid on={on!r} with mode='bias'; encodings on values need mode='contextual'")
        self.mode, self.method, self.on, self.shared_head = mode, method, on, shared_head
        self.alpha, self.beta, self.gamma = 1. * ratio, 2. * ratio, 8. * ratio
        self.num_buckets = irpe_num_buckets(method, self.beta, self.rank)
        self.prefix_bucket = self.num_buckets  # extra bucket for pairs with a prefix token
        tables = self.num_buckets + (1 if self.num_prefix_tokens else 0)
        heads = 1 if shared_head else self.num_heads
        axes = self.rank if method == 'cross' else 1
        d = self.head_dim
        for target in on:  # zero init, as the reference
            shape = {'bias': (tables,), 'contextual': (d, tables) if target != 'v' else (tables, d)}[mode]
            self.register_parameter(f'{target}_table', nn.Parameter(torch.zeros(self.depth, axes, heads, *shape)))
        self.table = LearnedTable(self.grid_size, self.dim, self.num_prefix_tokens, antialias=antialias,
                                  scheme=self.name) if ape else None
        self.needs_attn_probs = 'v' in on
        unused = {'tokens'} if not ape else set()
        unused |= {'bias'} if on == 'v' else set()
        unused |= {'value'} if 'v' not in on else set()
        self.hooks = self.hooks - unused

    def tokens(self, x, ctx):
        return self.table.add(self, x, ctx.grid, ctx.strategy)

    def inflate_state_dict(self, state_dict, prefix, mode='central'):
        """2D tables made 3D so that a clip of one frame is the image: 'product' repeats the 2D buckets for every
        temporal offset digit (3D id = t digit x (2 beta + 1)^2 + 2D id), 'cross' adds a zero table for t,
        'euclidean' / 'quant' keep their tables (the distance of a zero t offset is the 2D one)."""
        super().inflate_state_dict(state_dict, prefix, mode)
        side = 2 * int(self.beta) + 1
        for target in self.on:
            key = f'{prefix}{target}_table'
            t = state_dict.get(key)
            if t is None or t.shape == getattr(self, f'{target}_table').shape:
                continue
            if self.method == 'cross':
                state_dict[key] = torch.cat([torch.zeros_like(t[:, :1]), t], 1)  # (depth, axes, ...): t axis first
            elif self.method == 'product':
                dim = -2 if (target == 'v' and self.mode == 'contextual') else -1  # the bucket axis
                grid, extra = t.narrow(dim, 0, side ** 2), t.narrow(dim, side ** 2, t.shape[dim] - side ** 2)
                state_dict[key] = torch.cat([grid] * side + [extra], dim)

    # ----------------------------------------------------------------- bucket ids
    def _ids(self, shape: Tuple[int, ...], patch_rows: Optional[torch.Tensor], keys_first: bool, device):
        """Bucket ids by offset lookup, one (rows, N_patch) or (N_patch, rows) slice per axis table."""
        axes = range(len(shape)) if self.method == 'cross' else [None]
        out = []
        for a in axes:
            lookup = self.cached(('lookup', shape, a, device), lambda: irpe_offset_lookup(
                shape, self.method, self.alpha, self.beta, self.gamma, device=device, axis=a))
            out.append(irpe_bucket_ids(shape, self.method, self.alpha, self.beta, self.gamma, axis=a, rows=patch_rows,
                                       keys_first=keys_first, lookup=lookup))
        return torch.stack(out)

    def patch_ids(self, shape: Tuple[int, ...], patch_rows: Optional[torch.Tensor], device,
                  keys_first: bool = False) -> torch.Tensor:
        """(axes, rows, N_patch) bucket ids of the patch queries ``patch_rows`` (all when None) against every
        patch key; with ``keys_first`` (axes, N_patch, rows): the bucket of (key j as query, query i as key)."""
        if torch.compiler.is_compiling() or math.prod(shape) > self.cache_tokens:  # compiled: no size test
            return self._ids(shape, patch_rows, keys_first, device)
        # full[a, i, j]: the bucket of the offset q_i - k_j, for every pair of patches
        full = self.cached(('ids', shape, device), lambda: self._ids(shape, None, False, device))
        if patch_rows is None:
            return full
        return full[:, :, patch_rows] if keys_first else full[:, patch_rows]

    def bucket_ids(self, grid, rows: slice = slice(None), device=None, keys_first: bool = False) -> torch.Tensor:
        """(axes, rows, N) bucket ids of the query ``rows`` against every token, pairs with a prefix token in the
        prefix bucket; with ``keys_first`` (axes, N, rows): the bucket of (token j as query, row i as key)."""
        device = device or self.default_device()
        axes = grid.rank if self.method == 'cross' else 1

        def build():
            return grid_bias(rows, grid, (axes,), lambda skip, patch_rows, out: out.copy_(  # returns out
                self.patch_ids(grid.shape, patch_rows, device, keys_first)), self.prefix_bucket, dtype=torch.long,
                device=device, keys_first=keys_first)
        if rows == slice(None) and (torch.compiler.is_compiling() or grid.num_tokens <= self.cache_tokens):
            return self.cached(('bucket_ids', grid, device, keys_first), build)  # compiled: built in the graph
        return build()

    # ----------------------------------------------------------------- hooks
    def _pairs(self, grid) -> bool:
        """Whether contextual encodings gather the table per (query, key) pair (cost N x N x d per head) rather
        than per bucket (N x buckets x d): where 4 N <= buckets (module docstring). Compiled or exported models
        take the per-bucket path, which is right at any size, so no test on a traced token count enters the graph."""
        if self.pair_gather is not None:
            return self.pair_gather
        tokens = grid.num_tokens  # at most cache_tokens: the (rows, N, d) gather stays small with large ratios
        return not torch.compiler.is_compiling() and 4 * tokens <= self.num_buckets and tokens <= self.cache_tokens

    def _encode(self, x, table, ids, scale, pairs: bool):
        """Sum over axis tables of the encoding of every (row i of x, column j) pair, (B|1, H, rows, cols).

        Contextual, per bucket: x against every bucket once, (B, H, rows, buckets), then a gather by bucket id
        (the reference's efficient path; no (rows, cols, d) tensor is formed). Per pair: the table gathered to
        (H|1, rows, d, cols), then one (B, d) x (d, cols) product per head and row."""
        out = None
        for a in range(ids.shape[0]):
            idx = ids[a]
            if self.mode == 'bias':
                enc = table[a][:, idx].unsqueeze(0)  # (1, H|1, rows, cols)
            elif pairs:
                per_pair = table[a][:, :, idx].transpose(1, 2).to(x.dtype)  # (H|1, rows, d, cols)
                enc = ((x * scale).permute(1, 2, 0, 3) @ per_pair).permute(2, 0, 1, 3)  # (H, rows, B, cols)
            else:
                per_bucket = (x * scale) @ table[a].to(x.dtype)  # (B, H, rows, buckets)
                enc = per_bucket.gather(-1, idx.expand(per_bucket.shape[:2] + idx.shape))
            out = enc if out is None else out + enc
        return out

    def bias(self, q, k, ctx, layer, rows=slice(None)):
        scale = self.head_dim ** -0.5 if self.contextual_scale == 'sqrt_d' else 1.0
        out, pairs = None, self._pairs(ctx.grid)
        if 'k' in self.on:  # logits_ij += q_i . T[bucket_ij]
            out = self._encode(q, self.k_table[layer], self.bucket_ids(ctx.grid, rows, ctx.device), scale, pairs)
        if 'q' in self.on:  # logits_ij += k_j . T[bucket_ji]; the product / cross buckets are not symmetric
            ids_t = self.bucket_ids(ctx.grid, rows, ctx.device, keys_first=True)
            enc = self._encode(k, self.q_table[layer], ids_t, scale, pairs).transpose(-1, -2)
            out = enc if out is None else out + enc
        return out.to(q.dtype)

    def value(self, out, v, attn, ctx, layer, rows=slice(None)):
        ids = self.bucket_ids(ctx.grid, rows, ctx.device)
        table = self.v_table[layer]  # (axes, H|1, buckets, d)
        buckets = self._parameters['v_table'].shape[-2]  # an int, also under FX tracing
        pairs = self._pairs(ctx.grid)
        for a in range(ids.shape[0]):
            if pairs:  # out_i += sum_j a_ij T_v[bucket_ij]: (H, rows, B, cols) x (H|1, rows, cols, d)
                per_pair = table[a][:, ids[a]].to(attn.dtype)
                out = out + (attn.permute(1, 2, 0, 3) @ per_pair).permute(2, 0, 1, 3)
            else:
                per_bucket = attn.new_zeros(attn.shape[:-1] + (buckets,))
                per_bucket = per_bucket.scatter_add_(-1, ids[a].expand_as(attn), attn)  # attention per bucket
                out = out + per_bucket @ table[a].to(attn.dtype)
        return out
