"""iRPE, image relative position encoding (Wu et al., "Rethinking and Improving Relative Position
Encoding for Vision Transformer", ICCV 2021; microsoft/Cream ``iRPE/DeiT-with-iRPE/irpe.py``).

Every (query, key) offset falls into a bucket (``functional.irpe_bucket_ids``); each bucket has a
learned encoding. Per block and per target:

- keys (``k``): logits_ij += b_ij, with b_ij = T[h, bucket_ij] (bias mode) or (q_i / sqrt(d)) . T[h, :, bucket_ij]
  (contextual mode, Eq. 7);
- queries (``q``): logits_ij += (k_j / sqrt(d)) . T[h, :, bucket_ji] (contextual) or T[h, bucket_ji];
- values (``v``): out_i += sum_j a_ij T_v[h, bucket_ij, :] (contextual only, Eq. 8).

Contextual encodings are computed once per bucket (q against the table, (N, buckets)) and then
gathered to (N, N); value encodings aggregate the attention per bucket first (scatter-add), then
multiply by the table. Prefix tokens share one extra bucket, as the reference's ``skip`` tokens.
Bucket ids depend on the offset only: they are computed for the (2S-1)^rank offsets and looked up
per pair (the offset table cached per grid; the (N, N) ids cached for grids up to ``cache_tokens``,
else looked up per chunk of query rows).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import PositionalEncoding, check_choice, check_positive, register_pos_encoding
from .functional import IRPE_METHODS, irpe_bucket_ids, irpe_num_buckets, irpe_offset_lookup

IRPE_MODES = ('bias', 'contextual')
IRPE_TARGETS = ('k', 'q', 'v', 'qk', 'kv', 'qv', 'qkv')


@register_pos_encoding
class IRPE(PositionalEncoding):
    """Options:
        mode: 'bias' or 'contextual' (default, the paper's best).
        method: 'euclidean', 'quant', 'cross' (one table per axis, summed) or 'product' (default).
        on: where it acts: 'k' (default), 'q', 'v' or a combination such as 'qk' or 'qkv'.
        shared_head: one table for all heads (default True) or one per head.
        ratio: alpha:beta:gamma = 1:2:8 scaled by ``ratio`` (1.9, the paper's default).
    """
    name = 'irpe'

    def __init__(self, *, mode: str = 'contextual', method: str = 'product', on: str = 'k',
                 shared_head: bool = True, ratio: float = 1.9, **common):
        super().__init__(**common)
        check_choice(self.name, 'mode', mode, IRPE_MODES)
        check_choice(self.name, 'method', method, IRPE_METHODS)
        check_choice(self.name, 'on', on, IRPE_TARGETS)
        check_positive(self.name, 'ratio', ratio)
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
        # zero init, as the reference
        for target in 'qkv':
            if target not in on:
                continue
            shape = {'bias': (tables,), 'contextual': (d, tables) if target != 'v' else (tables, d)}[mode]
            self.register_parameter(f'{target}_table', nn.Parameter(torch.zeros(self.depth, axes, heads, *shape)))
        self.needs_attn_probs = 'v' in on
        unused = {'bias'} if on == 'v' else set()
        if 'v' not in on:
            unused.add('value')
        self._hooks_used = self._hooks_used - unused

    # grids up to this many tokens keep their (N, N) bucket ids cached; larger ones compute the ids of
    # each row chunk on the fly, so memory stays O(chunk x N)
    cache_tokens: int = 1024

    def bucket_ids(self, grid, rows: slice = slice(None)) -> torch.Tensor:
        """(axes, rows, N) bucket ids for the query ``rows`` of the grid (prefix tokens included)."""
        if grid.num_tokens <= self.cache_tokens:
            return self.cached(('ids', grid.shape, grid.num_prefix), lambda: self._bucket_ids(grid, slice(None)))[:, rows]
        return self._bucket_ids(grid, rows)

    def _bucket_ids(self, grid, rows: slice, keys_first: bool = False) -> torch.Tensor:
        """(axes, rows, N), or (axes, N, rows) with ``keys_first`` (bucket of key j against query i)."""
        p, n = grid.num_prefix, grid.num_tokens
        idx = torch.arange(n, device=self.scheme.device)[rows]
        patch = idx >= p
        axes = range(grid.rank) if self.method == 'cross' else [None]
        out = torch.full((len(axes), len(idx), n), self.prefix_bucket, dtype=torch.long, device=self.scheme.device)
        if keys_first:
            out = out.transpose(1, 2)
        for i, a in enumerate(axes):
            lookup = self.cached(('lookup', grid.shape, a), lambda: irpe_offset_lookup(
                grid.shape, self.method, self.alpha, self.beta, self.gamma, device=self.scheme.device, axis=a))
            ids = irpe_bucket_ids(grid.shape, self.method, self.alpha, self.beta, self.gamma, axis=a,
                                  rows=idx[patch] - p, keys_first=keys_first, lookup=lookup)
            if keys_first:
                out[i, p:, patch] = ids
            else:
                out[i, patch, p:] = ids
        return out

    def prepare(self, grid):
        self.check_grid(grid)
        return {}

    def _encode(self, x, table, ids, scale):
        """Sum over axis tables of the encoding of every (row i of x, column j) pair, (B|1, H, rows, cols).

        Contextual: x against every bucket once, (B, H, rows, buckets), then a gather by bucket id
        (the reference's efficient path; no (rows, cols, d) tensor is formed)."""
        out = None
        for a in range(ids.shape[0]):
            idx = ids[a]
            if self.mode == 'bias':
                enc = table[a][:, idx].unsqueeze(0)  # (1, H|1, rows, cols)
            else:
                per_bucket = (x * scale) @ table[a].to(x.dtype)  # (B, H, rows, buckets)
                enc = per_bucket.gather(-1, idx.expand(*per_bucket.shape[:2], *idx.shape))
            out = enc if out is None else out + enc
        return out

    def bias(self, q, k, ctx, layer, rows=slice(None)):
        scale = self.head_dim ** -0.5
        out = None
        if 'k' in self.on:  # logits_ij += q_i . T[bucket_ij]
            out = self._encode(q, self.k_table[layer], self.bucket_ids(ctx.grid, rows), scale)
        if 'q' in self.on:  # logits_ij += k_j . T[bucket_ji]; the product / cross buckets are not symmetric
            ids_t = self._transposed_ids(ctx.grid, rows)
            enc = self._encode(k, self.q_table[layer], ids_t, scale).transpose(-1, -2)
            out = enc if out is None else out + enc
        return out.to(q.dtype)

    def _transposed_ids(self, grid, rows: slice) -> torch.Tensor:
        """(axes, N, rows): bucket of (key j, query i) for every key j and the query ``rows``."""
        if grid.num_tokens <= self.cache_tokens:
            return self.bucket_ids(grid)[:, :, rows]
        return self._bucket_ids(grid, rows, keys_first=True)

    def value(self, out, v, attn, ctx, layer, rows=slice(None)):
        ids = self.bucket_ids(ctx.grid, rows)
        table = self.v_table[layer]  # (axes, H|1, buckets, d)
        for a in range(ids.shape[0]):
            per_bucket = attn.new_zeros(*attn.shape[:-1], table.shape[-2])
            per_bucket.scatter_add_(-1, ids[a].expand_as(attn), attn)  # attention summed per bucket
            out = out + per_bucket @ table[a].to(attn.dtype)
        return out
