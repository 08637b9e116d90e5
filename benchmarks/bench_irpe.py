#!/usr/bin/env python
"""Contextual iRPE: vitpe's two paths, per bucket and per pair, on 2D and 3D grids, against the straightforward
gather-then-matmul formulation; one attention layer, interleaved, same inputs and tables.

Per bucket (the reference's path): keys: q against every bucket once, (B, H, N, buckets), then a gather by
bucket id; values: the attention summed per bucket (scatter-add), then one product with the table. Per pair:
the table gathered for every (query, key) pair, (H, N, N, d), then one product per head and query row. The
first costs N x buckets, the second N x N per query: vitpe takes the second where a grid has fewer tokens than
buckets (3D 'product' tables have 343: a video grid of 4 x 2 x 2 tubelets has 17 tokens). ``naive_*`` below is
the formula written out (einsum), the reference both paths are checked against before timing (and in tests).

    python benchmarks/bench_irpe.py          # ViT-S heads, batch 8: 224 / 384 / 512 px, 8 x 32^2 and 16 x 224^2 clips
    python benchmarks/bench_irpe.py --smoke --output irpe.json

Time: the best of interleaved repeats (``bench_pe.best_times``). Prints a table (ms per layer of each path, the
path vitpe takes, and other / taken: >= 1 means vitpe takes the faster one) and writes JSON records.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vitpe  # noqa: E402
from vitpe.pe.base import Grid, PosContext  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pe import best_times  # noqa: E402  (one timing rule for both benchmarks)


def naive_key_bias(q: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits_ij += (q_i / sqrt d) . T[:, bucket_ij], the table gathered to (rows, N, d) first.
    q (B, H, rows, d); table (axes, H|1, d, buckets); ids (axes, rows, N)."""
    scale = q.shape[-1] ** -0.5
    out = 0
    for a in range(ids.shape[0]):
        gathered = table[a][:, :, ids[a]]  # (H|1, d, rows, N)
        out = out + torch.einsum('bhid,hdij->bhij', q * scale, gathered.expand(q.shape[1], *gathered.shape[1:]))
    return out


def naive_value(out: torch.Tensor, attn: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """out_i += sum_j a_ij T_v[bucket_ij, :], the table gathered to (rows, N, d) first.
    attn (B, H, rows, N); table (axes, H|1, buckets, d); ids (axes, rows, N)."""
    for a in range(ids.shape[0]):
        gathered = table[a][:, ids[a]]  # (H|1, rows, N, d)
        out = out + torch.einsum('bhij,hijd->bhid', attn, gathered.expand(attn.shape[1], *gathered.shape[1:]))
    return out


def setup(on: str, grid_shape, batch: int, heads: int, head_dim: int, method: str = 'product',
          shared_head: bool = True, seed: int = 0):
    """An iRPE module with random tables, its context on a grid of ``grid_shape`` tokens (2D or 3D) + a class
    token, and q, k, v, attn."""
    torch.manual_seed(seed)
    grid_shape = tuple(grid_shape)
    pe = vitpe.create_pos_encoding('irpe', dim=heads * head_dim, num_heads=heads, depth=1, grid_size=grid_shape,
                                   num_prefix_tokens=1, mode='contextual', on=on, method=method,
                                   shared_head=shared_head)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_(0, 0.1)
    grid = Grid(grid_shape, 1)
    ctx = PosContext(pe, grid, pe.prepare(grid))
    n = grid.num_tokens
    q, k, v = (torch.randn(batch, heads, n, head_dim) for _ in range(3))
    attn = torch.randn(batch, heads, n, n).softmax(-1)
    return pe, ctx, q, k, v, attn


def forced(pe, pairs: bool, step):
    """``step`` with vitpe's path forced: per pair (True) or per bucket (False)."""
    def run():
        pe.pair_gather = pairs
        try:
            return step()
        finally:
            del pe.pair_gather  # back to the class's choice by cost
    return run


def steps(on: str, pe, ctx, q, k, v, attn):
    """{'per_bucket', 'per_pair', 'naive'} steps of one layer: the key bias (on='k') or the value term (on='v')."""
    ids = pe.bucket_ids(ctx.grid)
    if on == 'k':
        step, naive = (lambda: pe.bias(q, k, ctx, 0)), (lambda: naive_key_bias(q, pe.k_table[0], ids))
    else:
        out = torch.zeros_like(q)
        step, naive = (lambda: pe.value(out, v, attn, ctx, 0)), (lambda: naive_value(out, attn, pe.v_table[0], ids))
    return {'per_bucket': forced(pe, False, step), 'per_pair': forced(pe, True, step), 'naive': naive}


def run(args):
    records = []
    grids = [(img // 16, img // 16) for img in args.sizes] + [tuple(map(int, g.split('x'))) for g in args.grids]
    for grid_shape in grids:
        for on in args.on:
            pe, ctx, q, k, v, attn = setup(on, grid_shape, args.batch, args.heads, args.head_dim)
            paths = steps(on, pe, ctx, q, k, v, attn)
            taken = 'per_pair' if pe._pairs(ctx.grid) else 'per_bucket'
            other = 'per_bucket' if taken == 'per_pair' else 'per_pair'
            with torch.no_grad():
                for name in ('per_bucket', 'per_pair'):
                    torch.testing.assert_close(paths[name](), paths['naive'](), atol=1e-4, rtol=1e-4)
                t = best_times({name: paths[name] for name in ('per_bucket', 'per_pair')}, args.repeats,
                               torch.device('cpu'))
            label = 'x'.join(map(str, grid_shape))
            print(f"grid {label}, on={on}: per bucket {t['per_bucket'] * 1e3:.2f} ms, per pair "
                  f"{t['per_pair'] * 1e3:.2f} ms", file=sys.stderr, flush=True)
            records.append({'grid': label, 'tokens': ctx.grid.num_tokens, 'buckets': pe.num_buckets, 'on': on,
                            'batch': args.batch, 'heads': args.heads, 'head_dim': args.head_dim,
                            'per_bucket_ms': t['per_bucket'] * 1e3, 'per_pair_ms': t['per_pair'] * 1e3,
                            'taken': taken, 'other_over_taken': t[other] / t[taken]})
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', nargs='+', type=int, default=[224, 384, 512], help='images: 16 px patches')
    ap.add_argument('--grids', nargs='+', default=['4x2x2', '8x14x14'],
                    help='more grids of tokens, e.g. 4x2x2 (8 frames of 32 px in 2 x 16 x 16 tubelets)')
    ap.add_argument('--on', nargs='+', default=['k', 'v'], choices=['k', 'v'])
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--heads', type=int, default=6)
    ap.add_argument('--head-dim', type=int, default=64)
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--smoke', action='store_true', help='seconds: 64 px and a 2 x 2 x 2 grid, batch 2, 2 repeats')
    ap.add_argument('--output', default='bench_irpe.json')
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.grids, args.batch, args.heads, args.repeats = [64], ['2x2x2'], 2, 2, 2
    records = run(args)
    with open(args.output, 'w') as f:
        json.dump(records, f, indent=1)
    print('| grid | tokens | buckets | on | per bucket ms | per pair ms | vitpe takes | other / taken |\n'
          '|---|---|---|---|---|---|---|---|')
    for r in records:
        print(f"| {r['grid']} | {r['tokens']} | {r['buckets']} | {r['on']} | {r['per_bucket_ms']:.2f} | "
              f"{r['per_pair_ms']:.2f} | {r['taken'].replace('_', ' ')} | {r['other_over_taken']:.2f} |")
    print(f"wrote {args.output}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
