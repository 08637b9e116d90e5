#!/usr/bin/env python
"""What a model without positions can still read from the built-in ``position`` task (issue 9's NoPE at 0.32).

A ViT without positional encoding sees a bag of patches: it cannot tell where a patch is, but it sees where
inside its patch each shape sits (the shape's offset from the patch borders) and how large it is. This script
gives a small MLP exactly that and nothing else: for each of the three shapes, its centre's offset within the
16 px patch grid of the 64 px training image (as sin / cos of the phase, per axis) and its radius; trained on
``--scenes`` x 3/4 scenes, tested on the rest. Its test accuracy on the 4-way label is the part of the task
the offsets give away; it also predicts the pair's orientation (left/right vs above/below) alone, and, as
a control, the label from the radii alone.

    python benchmarks/position_leak.py --scenes 8000
"""
import argparse
import math

import torch

from vitpe.data.synthetic import make_scene


def offset_features(task: str, n: int, patch: float):
    feats, labels = [], []
    for i in range(n):
        scene = make_scene(task, i)
        f = []
        for s in scene.shapes:
            for c in (s.cx, s.cy):
                phase = 2 * math.pi * (c % patch) / patch
                f += [math.sin(phase), math.cos(phase)]
            f.append(10 * s.radius)
        feats.append(f)
        labels.append(scene.label)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(labels)


def held_out_accuracy(x, y, steps: int = 300, seed: int = 0) -> float:
    torch.manual_seed(seed)
    k = len(x) * 3 // 4
    mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, int(y.max()) + 1))
    opt = torch.optim.Adam(mlp.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(mlp(x[:k]), y[:k])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (mlp(x[k:]).argmax(1) == y[k:]).float().mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scenes', type=int, default=8000)
    ap.add_argument('--patch', type=float, default=0.25, help='patch size as a fraction of the image (16 / 64)')
    args = ap.parse_args(argv)
    x, y = offset_features('position', args.scenes, args.patch)
    n_test = len(x) - len(x) * 3 // 4
    se = math.sqrt(0.25 * 0.75 / n_test)
    print(f"label (4 classes, chance 0.25, standard error {se:.3f}): {held_out_accuracy(x, y):.3f}")
    print(f"orientation (2 classes, chance 0.5): {held_out_accuracy(x, (y >= 2).long()):.3f}")
    radii = x[:, 4::5]  # the control: the same MLP given the radii only
    print(f"label from the radii alone (the control): {held_out_accuracy(radii, y):.3f}")


if __name__ == '__main__':
    main()
