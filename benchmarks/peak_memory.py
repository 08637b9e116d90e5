#!/usr/bin/env python
"""Peak memory of one inference forward in a fresh process (``vitpe.memory.PeakMemory``: on the CPU the
largest rise of malloc's bytes in use, glibc mallinfo2; without it the peak resident set), above the
level just before the forward.

    python benchmarks/peak_memory.py --scheme decomposed --img-size 1024 [--model small --depth 12 --batch 8]

Prints one JSON line: scheme, img_size, batch, attention_path, peak_rise_mb, measure, rss_before_mb.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timm  # noqa: E402

import vitpe  # noqa: E402,F401
from vitpe.memory import PeakMemory, resident_mb  # noqa: E402


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
    before = resident_mb()
    with torch.no_grad(), PeakMemory('cpu') as mem:
        model(x)
    n = (args.img_size // 16) ** 2 + 1
    print(json.dumps({'scheme': args.scheme, 'img_size': args.img_size, 'batch': args.batch,
                      'attention_path': model.blocks[0].attn.path_for(model.pos_enc, args.batch, n),
                      'peak_rise_mb': mem.mb, 'measure': mem.measure, 'rss_before_mb': before}))


if __name__ == '__main__':
    main()
