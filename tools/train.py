#!/usr/bin/env python
"""Train or fine-tune any vitpe (or timm) model by name. See ``python tools/train.py --help``.

    python tools/train.py --model vitpe_tiny_patch16_rope_mixed_224 --data synthetic:position \\
        --img-size 64 --epochs 30 --output runs/x
    torchrun --nproc_per_node=2 tools/train.py ...      # several processes (DDP)
    python tools/train.py --output runs/x --resume        # continue after a kill
    python tools/train.py --finetune runs/x/best.pth --img-size 96 --output runs/x96
"""
import sys

from vitpe.training import main

if __name__ == '__main__':
    sys.exit(main())
