#!/usr/bin/env python
"""Evaluate checkpoints at several resolutions with no fine-tuning; write results.csv, results.md and
resolution.png (and with --diagnostics the attention entropy and distance per layer, diagnostics.png).

    python tools/eval_resolution.py --checkpoint runs/*/best.pth --resolutions 48 64 96 128 160 --output sweep/
    python tools/eval_resolution.py --checkpoint runs/rope/best.pth --resolutions 64 128 --strategy none pi ntk yarn pi+logit
    python tools/eval_resolution.py --checkpoint runs/ape/best.pth --resolutions 64 320 --diagnostics
"""
import argparse
import sys

import torch

from vitpe.eval import STRATEGIES, sweep, to_markdown, write_results
from vitpe.errors import TrainingError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', nargs='+', required=True)
    p.add_argument('--resolutions', nargs='+', type=int, required=True)
    p.add_argument('--strategy', nargs='+', default=['none'], metavar='STRATEGY',
                   help=f"one or more of {', '.join(STRATEGIES)}, combinations joined by + (pi+logit), or all")
    p.add_argument('--data', default=None, help="evaluation data (default: each checkpoint's training data)")
    p.add_argument('--samples', type=int, default=512, help='evaluation images (built-in data)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--output', default='sweep')
    p.add_argument('--labels', nargs='+', help='row names (default: the checkpoint folder names)')
    p.add_argument('--diagnostics', action='store_true',
                   help='also attention entropy and mean attention distance per layer (CSV columns, diagnostics.png)')
    args = p.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        records = sweep(args.checkpoint, args.resolutions, args.strategy, data=args.data, samples=args.samples,
                        batch_size=args.batch_size, device=device, labels=args.labels, diagnostics=args.diagnostics)
    except (TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_results(records, args.output)
    print(to_markdown(records))
    print('wrote ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
