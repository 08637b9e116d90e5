#!/usr/bin/env python
"""Contextual iRPE: vitpe's formulation against the straightforward gather-then-matmul one, one
attention layer, interleaved, same inputs and tables.

Straightforward (``naive_*``): gather the table for every (query, key) pair, a (rows, N, d) tensor, then
multiply with q (keys: logits_ij += q_i . T[bucket_ij]) or with the attention (values:
out_i += sum_j a_ij T_v[bucket_ij]). vitpe (``vitpe.pe.irpe``): keys: q against every bucket once,
(B, H, N, buckets), then a gather by bucket id; values: the attention summed per bucket (scatter-add),
then one product with the table. Both give the same numbers (checked here before timing, and in tests).

    python benchmarks/bench_irpe.py                         # ViT-S heads, batch 8, 224 / 384 / 512 grids
    python benchmarks/bench_irpe.py --smoke --output irpe.json

Time: the best of interleaved repeats (``bench_pe.best_times``). Prints a table (ms per layer, ratio
naive / vitpe: > 1 means vitpe is faster) and writes JSON records.
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


def setup(on: str, grid_side: int, batch: int, heads: int, head_dim: int, method: str = 'product',
          shared_head: bool = True, seed: int = 0):
    """An iRPE module with random tables, its context on a grid_side^2 grid (+ class token), q, k, v, attn."""
    torch.manual_seed(seed)
    pe = vitpe.create_pos_encoding('irpe', dim=heads * head_dim, num_heads=heads, depth=1,
                                   grid_size=(grid_side, grid_side), num_prefix_tokens=1, mode='contextual',
                                   on=on, method=method, shared_head=shared_head)
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_(0, 0.1)
    grid = Grid((grid_side, grid_side), 1)
    ctx = PosContext(pe, grid, pe.prepare(grid))
    n = grid.num_tokens
    q, k, v = (torch.randn(batch, heads, n, head_dim) for _ in range(3))
    attn = torch.randn(batch, heads, n, n).softmax(-1)
    return pe, ctx, q, k, v, attn


def steps(on: str, pe, ctx, q, k, v, attn):
    """(vitpe step, naive step) for one layer: the key bias (on='k') or the value term (on='v')."""
    ids = pe.bucket_ids(ctx.grid)
    if on == 'k':
        return (lambda: pe.bias(q, k, ctx, 0)), (lambda: naive_key_bias(q, pe.k_table[0], ids))
    out = torch.zeros_like(q)
    return (lambda: pe.value(out, v, attn, ctx, 0)), (lambda: naive_value(out, attn, pe.v_table[0], ids))


def run(args):
    records = []
    for img in args.sizes:
        side = img // 16
        for on in args.on:
            pe, ctx, q, k, v, attn = setup(on, side, args.batch, args.heads, args.head_dim)
            fast, naive = steps(on, pe, ctx, q, k, v, attn)
            with torch.no_grad():
                torch.testing.assert_close(fast(), naive(), atol=1e-4, rtol=1e-4)
                t = best_times({'vitpe': fast, 'naive': naive}, args.repeats, torch.device('cpu'))
            print(f"{img} px, on={on}: vitpe {t['vitpe'] * 1e3:.1f} ms, naive {t['naive'] * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
            records.append({'img_size': img, 'tokens': ctx.grid.num_tokens, 'on': on, 'batch': args.batch,
                            'heads': args.heads, 'head_dim': args.head_dim, 'vitpe_ms': t['vitpe'] * 1e3,
                            'naive_ms': t['naive'] * 1e3, 'speedup': t['naive'] / t['vitpe']})
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', nargs='+', type=int, default=[224, 384, 512])
    ap.add_argument('--on', nargs='+', default=['k', 'v'], choices=['k', 'v'])
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--heads', type=int, default=6)
    ap.add_argument('--head-dim', type=int, default=64)
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--smoke', action='store_true', help='seconds: 64 px, batch 2, 2 repeats')
    ap.add_argument('--output', default='bench_irpe.json')
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch, args.heads, args.repeats = [64], 2, 2, 2
    records = run(args)
    with open(args.output, 'w') as f:
        json.dump(records, f, indent=1)
    print('| size | tokens | on | vitpe ms | naive ms | speedup |\n|---|---|---|---|---|---|')
    for r in records:
        print(f"| {r['img_size']} | {r['tokens']} | {r['on']} | {r['vitpe_ms']:.1f} | {r['naive_ms']:.1f} | "
              f"{r['speedup']:.2f} |")
    print(f"wrote {args.output}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
