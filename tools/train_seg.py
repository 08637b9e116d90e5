#!/usr/bin/env python
"""Train a vitpe segmentation model (torchvision heads over a ViTDet-style backbone). See ``--help``.

    python tools/train_seg.py --model vitpe_micro_patch16_rope_mixed_64 --window-size 4 --global-blocks 1 3 \\
        --img-size 128 --epochs 10 --output runs/seg
    python tools/train_seg.py --config my.yaml --output runs/x --lr 1e-4
    torchrun --nproc_per_node=2 tools/train_seg.py ...      # several processes (DDP)
    python tools/train_seg.py --output runs/seg --resume        # continue after a kill

The options are the fields of ``vitpe.dense.config.DenseConfig``; the loop is ``vitpe.dense.train.train``.
"""
import sys

from vitpe.dense.train import main as train_main


def main(argv=None) -> int:
    return train_main(argv, 'segmentation')


if __name__ == '__main__':
    sys.exit(main())
