#!/usr/bin/env python
"""Evaluate checkpoints at several resolutions (video: and frame counts) with no fine-tuning; write results.csv,
results.md and resolution.png (a frame sweep: accuracy against frames), and with --diagnostics the attention
entropy and distance per layer (diagnostics.png).

    python tools/eval_resolution.py --checkpoint runs/*/best.pth --resolutions 48 64 96 128 160 --output sweep/
    python tools/eval_resolution.py --checkpoint runs/rope/best.pth --resolutions 64 128 --strategy none pi ntk yarn pi+logit
    python tools/eval_resolution.py --checkpoint runs/ape/best.pth --resolutions 64 320 --diagnostics
    python tools/eval_resolution.py --checkpoint runs/deit_s/best.pth --data /data/imagenet --resolutions 160 224 320 \
        --protocol crop resize
    python tools/eval_resolution.py --checkpoint runs/video/best.pth --resolutions 64 --frames 4 8 16 32 \
        --strategy none pi_t ntk_t riflex

Image folders: every resolution goes through the checkpoint's evaluation transform. Protocols: "crop" resizes the
shorter side to res / crop_pct (the checkpoint's) and takes the centre res x res crop (DeiT, timm); "resize"
resizes the whole image to res x res (nothing cut off, aspect not kept). Several protocols: one row each.
Folders of clips: resized whole, on the checkpoint's validation split (or --data).
"""
import argparse
import sys

import torch

from vitpe.data.pipeline import EVAL_PROTOCOLS
from vitpe.eval import STRATEGIES, sweep, to_markdown, write_results
from vitpe.errors import TrainingError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', nargs='+', required=True)
    p.add_argument('--resolutions', nargs='+', type=int, required=True)
    p.add_argument('--frames', nargs='+', type=int, default=None,
                   help="video checkpoints: frame counts to test (default: the training clip's)")
    p.add_argument('--strategy', nargs='+', default=['none'], metavar='STRATEGY',
                   help=f"one or more of {', '.join(STRATEGIES)}, combinations joined by + (pi+logit), or all")
    p.add_argument('--data', default=None, help="evaluation data (default: each checkpoint's training data); a folder's val/, else all of "
                        "it, except the checkpoint's own training folder: its validation split (val/ or the part "
                        "--val-fraction held out)")
    p.add_argument('--samples', type=int, default=512,
                   help='evaluation images or clips (folders: drawn at random; each resolution held in memory)')
    p.add_argument('--protocol', nargs='+', default=['crop'], choices=list(EVAL_PROTOCOLS),
                   help='image folders: crop (resize by crop_pct, centre crop) and/or resize (the whole image); '
                        'resize is refused for built-in data and clips')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--output', default='sweep')
    p.add_argument('--labels', nargs='+', help='row names (default: the checkpoint folder names)')
    p.add_argument('--diagnostics', action='store_true',
                   help='also attention entropy and mean attention distance per layer (CSV columns, diagnostics.png)')
    args = p.parse_args(argv)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:  # several protocols: one row per checkpoint and protocol
        records = sweep(args.checkpoint, args.resolutions, args.strategy, data=args.data, samples=args.samples,
                        batch_size=args.batch_size, device=device, labels=args.labels, protocol=args.protocol,
                        diagnostics=args.diagnostics, frames=args.frames)
    except (TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_results(records, args.output)
    print(to_markdown(records))
    print('wrote ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
