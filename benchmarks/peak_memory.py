#!/usr/bin/env python
"""Peak memory of one inference forward, measured as the process's peak resident set (ru_maxrss) in a
fresh process, above the resident set just before the forward.

    python benchmarks/peak_memory.py --scheme decomposed --img-size 1024 [--model small --depth 12 --batch 8]

Prints one JSON line: scheme, img_size, batch, attention_path, peak_rise_mb.
"""
import argparse
import json
import os
import resource
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timm  # noqa: E402

import vitpe  # noqa: E402,F401


def rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scheme', required=True)
    ap.add_argument('--model', default='small')
    ap.add_argument('--depth', type=int, default=12)
    ap.add_argument('--img-size', type=int, default=1024)
    ap.add_argument('--batch', type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = timm.create_model(f'vitpe_{args.model}_patch16_224', pos_enc=args.scheme, depth=args.depth,
                              img_size=args.img_size, num_classes=0).eval()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # load kernels and caches at a small size
    before = rss_mb()
    # ru_maxrss only grows: it must be below ``before`` here for the rise to be measured (fresh process)
    start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.no_grad():
        model(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = (args.img_size // 16) ** 2 + 1
    print(json.dumps({'scheme': args.scheme, 'img_size': args.img_size, 'batch': args.batch,
                      'attention_path': model.blocks[0].attn.path_for(model.pos_enc, args.batch, n),
                      'peak_rise_mb': peak - max(before, 0), 'peak_before_mb': start_peak, 'rss_before_mb': before}))


if __name__ == '__main__':
    main()
