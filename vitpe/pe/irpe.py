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
"""
from __future__ import annotations

import torch
from torch import nn

from .base import PositionalEncoding, check_choice, check_positive, register_pos_encoding
from .functional import IRPE_METHODS, irpe_bucket_ids, irpe_num_buckets, pad_prefix_buckets

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

    def bucket_ids(self, grid):
        """(axes, N, N) bucket ids for the grid, prefix tokens included."""
        def build():
            axes = range(grid.rank) if self.method == 'cross' else [None]
            ids = [pad_prefix_buckets(irpe_bucket_ids(grid.shape, self.method, self.alpha, self.beta, self.gamma,
                                                      device=self.scheme.device, axis=a),
                                      grid.num_prefix, self.prefix_bucket) for a in axes]
            return torch.stack(ids)
        return self.cached(('ids', grid.shape, grid.num_prefix), build)

    def prepare(self, grid):
        self.check_grid(grid)
        return {'ids': self.bucket_ids(grid)}

    def _encode(self, x, table, ids, scale):
        """Sum over axis tables of the encoding for every (row i, column j) pair, (B|1, H, N, N)."""
        out = 0
        for a in range(ids.shape[0]):
            if self.mode == 'bias':
                out = out + table[a][:, ids[a]].unsqueeze(0)  # (1, H|1, N, N)
            else:
                per_bucket = (x * scale) @ table[a].to(x.dtype)  # (B, H, N, buckets)
                idx = ids[a].expand(*per_bucket.shape[:2], *ids[a].shape)
                out = out + per_bucket.gather(-1, idx)
        return out

    def bias(self, q, k, ctx, layer):
        ids = ctx.state['ids']
        scale = self.head_dim ** -0.5
        out = None
        if 'k' in self.on:
            out = self._encode(q, self.k_table[layer], ids, scale)
        if 'q' in self.on:
            enc = self._encode(k, self.q_table[layer], ids, scale).transpose(-1, -2)
            out = enc if out is None else out + enc
        return out.to(q.dtype)

    def value(self, out, v, attn, ctx, layer):
        ids = ctx.state['ids']
        table = self.v_table[layer]  # (axes, H|1, buckets, d)
        for a in range(ids.shape[0]):
            per_bucket = attn.new_zeros(*attn.shape[:-1], table.shape[-2])
            per_bucket.scatter_add_(-1, ids[a].expand_as(attn), attn)  # (B, H, N, buckets)
            out = out + per_bucket @ table[a].to(attn.dtype)
        return out
