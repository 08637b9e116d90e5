#!/usr/bin/env python
"""Evaluate dense checkpoints (tools/train_det.py, train_seg.py) at several input sizes with no fine-tuning; write
results.csv, results.md and resolution.png (box AP50 or mIoU against size; runs laid out as runs/<name>/seed<k>/
are one row, mean ± std over the seeds).

    python tools/eval_dense.py --checkpoint runs/det/*/seed*/best.pth --eval-sizes 64 96 128 192 256 --output sweep_det
    python tools/eval_dense.py --checkpoint runs/seg_rope/best.pth --eval-sizes 64 128 256 --strategy none pi ntk

The built-in scenes: their test split (never seen in training or model selection), rendered at every size;
a data folder: its val split resized to every size.
"""
import argparse
import sys

import torch

from vitpe.dense.sweep import dense_markdown, dense_sweep, write_dense_results
from vitpe.errors import TrainingError
from vitpe.eval import STRATEGIES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', nargs='+', required=True, help='dense checkpoints (best.pth / last.pth)')
    p.add_argument('--eval-sizes', nargs='+', type=int, required=True, help='square input sizes in pixels')
    p.add_argument('--strategy', nargs='+', default=['none'], metavar='STRATEGY',
                   help=f"one or more of {', '.join(STRATEGIES)}, combinations joined by + (pi+logit), or all; "
                        f"those that do not apply to a checkpoint's scheme are skipped for it")
    p.add_argument('--samples', type=int, default=64, help='built-in data: test scenes')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--output', default='sweep_dense')
    args = p.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        records = dense_sweep(args.checkpoint, args.eval_sizes, args.strategy, samples=args.samples,
                              batch_size=args.batch_size, data_dir=f'{args.output}/data', device=device)
    except (TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_dense_results(records, args.output)
    print(dense_markdown(records))
    print('wrote ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
