#!/usr/bin/env python
"""Train or fine-tune any vitpe (or timm) model by name. See ``python tools/train.py --help``.

    python tools/train.py --model vitpe_tiny_patch16_rope_mixed_224 --data synthetic:position \\
        --img-size 64 --epochs 30 --output runs/x
    python tools/train.py --config configs/train_micro_rope_mixed_position_64.yaml --output runs/y --lr 2e-3
    torchrun --nproc_per_node=2 tools/train.py ...      # several processes (DDP)
    python tools/train.py --output runs/x --resume        # continue after a kill
    python tools/train.py --initial-checkpoint runs/x/best.pth --img-size 96 --output runs/x96
    python tools/train.py --model vitpe_small_patch16_rope_mixed_224 --data /data/imagenet --aa 3a --output runs/z
    torchrun --nproc_per_node=8 tools/train.py -c configs/imagenet/deit_small.yaml --data /data/imagenet --output runs/d

The options are the fields of ``vitpe.config.TrainConfig``; the loop is ``vitpe.training.train``.
"""
import sys

from vitpe.config import parse_config
from vitpe.errors import exit_code
from vitpe.training import train


def main(argv=None, callbacks=None) -> int:
    """Parse the command line into a TrainConfig and train; a TrainingError prints its message, exit code 2."""
    return exit_code(train, parse_config(argv), callbacks=callbacks)


if __name__ == '__main__':
    sys.exit(main())
