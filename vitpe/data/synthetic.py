"""Procedural scenes of simple shapes, described in continuous coordinates (the unit square) and
rendered anti-aliased at any resolution, so the same scene can be shown at 48, 64, 96 ... pixels.
Deterministic by seed; no downloads.

Tasks (labels):
- ``position``: a red and a blue shape (plus a distractor); is the red one left of, right of, above or
  below the blue one (4 classes). Needs position: a model without any cannot solve it.
- ``quadrant``: which quadrant holds the one shape of another kind (4 classes, absolute position).
- ``kind``: the kind of the one red shape among shapes of other colours (4 classes). Position plays no
  part: the control task.

Every scene also yields boxes and masks of its shapes (``Scene.boxes``, ``render(..., masks=True)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

KINDS = ('circle', 'square', 'triangle', 'ring')
COLOURS = {
    'red': (0.9, 0.15, 0.1), 'blue': (0.1, 0.25, 0.9), 'green': (0.1, 0.75, 0.2), 'yellow': (0.95, 0.85, 0.1),
    'magenta': (0.85, 0.1, 0.8), 'cyan': (0.1, 0.8, 0.85),
}
BACKGROUNDS = ('plain', 'gradient', 'texture', 'noise')
POSITION_FREE_BACKGROUNDS = ('plain', 'noise')
TASKS = {
    'position': ('left', 'right', 'above', 'below'),
    'quadrant': ('top-left', 'top-right', 'bottom-left', 'bottom-right'),
    'kind': KINDS,
}
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass
class Shape:
    kind: str
    colour: Tuple[float, float, float]
    cx: float  # centre, unit square (x to the right, y down)
    cy: float
    radius: float  # circumradius, unit square
    angle: float = 0.0

    def box(self) -> Tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in the unit square."""
        r = self.radius
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)


@dataclass
class Scene:
    shapes: List[Shape]
    background: str
    bg_colour: Tuple[float, float, float]
    bg_params: Tuple[float, ...]
    seed: int
    label: int = 0
    categories: List[int] = field(default_factory=list)  # per shape: index in KINDS

    def boxes(self, size: Sequence[int]) -> np.ndarray:
        """(num_shapes, 4) boxes x0, y0, x1, y1 in pixels of an image of ``size`` (H, W), clipped."""
        h, w = size
        b = np.array([s.box() for s in self.shapes], dtype=np.float32).reshape(-1, 4)
        b[:, [0, 2]] = np.clip(b[:, [0, 2]] * w, 0, w)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]] * h, 0, h)
        return b


def _sdf(shape: Shape, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance (unit-square units) of every pixel centre to the shape; negative inside."""
    px, py = x - shape.cx, y - shape.cy
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    qx, qy = c * px + s * py, -s * px + c * py
    r = shape.radius
    if shape.kind == 'circle':
        return torch.sqrt(qx ** 2 + qy ** 2) - r * 0.9
    if shape.kind == 'ring':
        return (torch.sqrt(qx ** 2 + qy ** 2) - r * 0.7).abs() - r * 0.22
    if shape.kind == 'square':
        half = r * 0.7
        dx, dy = qx.abs() - half, qy.abs() - half
        outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
        return outside + torch.maximum(dx, dy).clamp(max=0)
    if shape.kind == 'triangle':  # equilateral, inradius r/2: max over the three edge half-planes
        d = None
        for k in range(3):
            a = math.pi / 2 + k * 2 * math.pi / 3
            e = qx * math.cos(a) + qy * math.sin(a) - r * 0.5
            d = e if d is None else torch.maximum(d, e)
        return d
    raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {list(KINDS)}")


def render(scene: Scene, size: Sequence[int], masks: bool = False):
    """Render ``scene`` at ``size`` (H, W): float image (3, H, W) in [0, 1], and optionally
    (num_shapes, H, W) boolean masks of the visible part of each shape."""
    h, w = int(size[0]), int(size[1])
    y = ((torch.arange(h, dtype=torch.float32) + 0.5) / h)[:, None]
    x = ((torch.arange(w, dtype=torch.float32) + 0.5) / w)[None, :]
    bg = torch.tensor(scene.bg_colour)[:, None, None].expand(3, h, w).clone()
    p = scene.bg_params
    if scene.background == 'gradient':
        bg = bg + (p[0] * (x - 0.5) + p[1] * (y - 0.5)) * 0.4
    elif scene.background == 'texture':  # resolution-independent stripes in continuous coordinates
        bg = bg + 0.08 * torch.sin(2 * math.pi * (p[0] * x + p[1] * y) * 6 + p[2])
    elif scene.background == 'noise':
        g = torch.Generator().manual_seed(scene.seed)
        bg = bg + 0.06 * torch.randn(3, h, w, generator=g)
    img = bg
    pixel = 1.0 / min(h, w)
    covers = []
    for shape in scene.shapes:
        cover = (0.5 - _sdf(shape, x, y) / pixel).clamp(0, 1)  # about one pixel of anti-aliasing
        img = img * (1 - cover) + torch.tensor(shape.colour)[:, None, None] * cover
        covers.append(cover)
    img = img.clamp(0, 1)
    if not masks:
        return img
    visible = []
    for i, cover in enumerate(covers):  # later shapes occlude earlier ones
        m = cover > 0.5
        for later in covers[i + 1:]:
            m = m & ~(later > 0.5)
        visible.append(m)
    return img, torch.stack(visible) if visible else torch.zeros(0, h, w, dtype=torch.bool)


def _place(rng: np.random.Generator, radii: Sequence[float], tries: int = 200) -> List[Tuple[float, float]]:
    """Non-overlapping centres for shapes of the given radii, inside the unit square."""
    for _ in range(tries):
        pts = []
        for r in radii:
            for _ in range(50):
                cx, cy = rng.uniform(r, 1 - r, size=2)
                if all(math.hypot(cx - x, cy - y) > r + rr + 0.02 for (x, y), rr in zip(pts, radii)):
                    pts.append((float(cx), float(cy)))
                    break
        if len(pts) == len(radii):
            return pts
    raise RuntimeError("could not place shapes without overlap")


def make_scene(task: str, seed: int) -> Scene:
    """The scene of ``task`` for ``seed`` (deterministic)."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {list(TASKS)}")
    rng = np.random.default_rng(seed)
    # A background that varies smoothly over the image (gradient, stripes) tells every patch where it is,
    # given the whole image: it would leak absolute position to a model with no positional encoding.
    # The position tasks therefore draw only position-free backgrounds (plain, per-pixel noise).
    backgrounds = BACKGROUNDS if task == 'kind' else POSITION_FREE_BACKGROUNDS
    background = backgrounds[rng.integers(len(backgrounds))]
    bg_colour = tuple(float(v) for v in rng.uniform(0.35, 0.6) + rng.uniform(-0.05, 0.05, size=3))
    bg_params = tuple(float(v) for v in rng.uniform(-1, 1, size=3))
    neutral = [c for c in COLOURS if c not in ('red', 'blue')]

    def shape(kind, colour, cx, cy, r):
        jitter = rng.uniform(-0.05, 0.05, size=3)
        col = tuple(float(np.clip(v + j, 0, 1)) for v, j in zip(COLOURS[colour], jitter))
        return Shape(kind, col, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))

    if task == 'position':
        label = int(rng.integers(4))
        for _ in range(5000):
            radii = rng.uniform(0.07, 0.11, size=3)
            (rx, ry), (bx, by), (dx_, dy_) = _place(rng, radii)
            dx, dy = rx - bx, ry - by
            # the dominant axis must win clearly, so that the label is unambiguous, and the two shapes must
            # stay more than a quarter of the image apart along it: then no 16 px patch of a 64 px image
            # holds parts of both, and no single patch shows the answer to a model without positions
            gap = radii[0] + radii[1] + 0.26
            if label in (0, 1) and abs(dx) > gap and abs(dy) < 0.5 * abs(dx) and (dx < 0) == (label == 0):
                break
            if label in (2, 3) and abs(dy) > gap and abs(dx) < 0.5 * abs(dy) and (dy < 0) == (label == 2):
                break
        kinds = rng.choice(KINDS, size=3)
        shapes = [shape(kinds[0], 'red', rx, ry, radii[0]), shape(kinds[1], 'blue', bx, by, radii[1]),
                  shape(kinds[2], neutral[rng.integers(len(neutral))], dx_, dy_, radii[2])]
    elif task == 'kind':
        # the kind of the one red shape, among 2-3 shapes of other colours and any kinds
        n = int(rng.integers(3, 5))
        radii = rng.uniform(0.11, 0.16, size=n)
        pts = _place(rng, radii)
        kinds = [int(rng.integers(len(KINDS))) for _ in range(n)]
        label = kinds[0]
        shapes = [shape(KINDS[k], 'red' if i == 0 else neutral[rng.integers(len(neutral))], x, y, r)
                  for i, (k, (x, y), r) in enumerate(zip(kinds, pts, radii))]
    else:
        n = int(rng.integers(3, 5))
        common, odd = rng.choice(len(KINDS), size=2, replace=False)
        radii = rng.uniform(0.08, 0.12, size=n)
        label = int(rng.integers(4))
        for _ in range(1000):
            pts = _place(rng, radii)
            qx, qy = pts[0]
            if (qy >= 0.5) * 2 + (qx >= 0.5) == label and min(abs(qx - 0.5), abs(qy - 0.5)) > 0.05:
                break
        colour = neutral + ['red', 'blue']
        shapes = [shape(KINDS[odd if i == 0 else common], colour[rng.integers(len(colour))], x, y, r)
                  for i, ((x, y), r) in enumerate(zip(pts, radii))]
    categories = [KINDS.index(s.kind) for s in shapes]
    return Scene(shapes, background, bg_colour, bg_params, seed, label, categories)


_BUILT = {}


BUILTIN_KINDS = ('synthetic', 'clips')


def builtin_kind(spec: str) -> Optional[str]:
    """'synthetic' or 'clips' when ``spec`` names built-in data (``<kind>`` or ``<kind>:<task>``), else None (a
    path: a folder called ``clips_ucf/`` is a folder)."""
    kind, colon, _ = spec.partition(':')
    return kind if kind in BUILTIN_KINDS and (colon or spec == kind) else None


def builtin_dataset(spec: str, tasks, size, split: str, num_samples, seed: int, make) -> Dataset:
    """The built-in dataset ``<kind>:<task>`` (``synthetic:position``, ``clips:direction``; the first of ``tasks``
    when no task is named), ``make(task, num_samples)`` rendered once per process and shared by every run that
    asks for the same one."""
    kind, _, task = spec.partition(':')
    task = task or next(iter(tasks))
    if task not in tasks:
        raise ValueError(f"unknown {kind} task {task!r} in --data {spec!r}; expected one of "
                         f"{[kind + ':' + t for t in tasks]}")
    n = num_samples or (4096 if split == 'train' else 512)
    key = (kind, task, tuple(size), n, split, seed)
    if key not in _BUILT:
        _BUILT[key] = make(task, n)
    return _BUILT[key]


class SyntheticShapes(Dataset):
    """``num_samples`` scenes of ``task`` rendered at ``img_size``, normalised with (MEAN, STD).

    Scenes depend only on (seed, index): the same index at another ``img_size`` is the same scene.
    Train and test sets use different seeds (``split``). Rendered images are cached as uint8."""

    SPLIT_SEEDS = {'train': 0, 'val': 10_000_000, 'test': 20_000_000}

    def __init__(self, task: str = 'position', img_size=64, num_samples: int = 1000, split: str = 'train',
                 seed: int = 0, cache: bool = True):
        if task not in TASKS:
            raise ValueError(f"unknown synthetic task {task!r}; expected one of {list(TASKS)}")
        if split not in self.SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(self.SPLIT_SEEDS)}")
        self.task, self.split = task, split
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_samples = num_samples
        self.base_seed = self.SPLIT_SEEDS[split] + seed * 1_000_003
        self.classes = list(TASKS[task])
        self._cache = {} if cache else None
        self._mean = torch.tensor(MEAN)[:, None, None]
        self._std = torch.tensor(STD)[:, None, None]

    def __len__(self):
        return self.num_samples

    def scene(self, index: int) -> Scene:
        return make_scene(self.task, self.base_seed + index)

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        item = None if self._cache is None else self._cache.get(index)
        if item is None:
            scene = self.scene(index)
            item = ((render(scene, self.img_size) * 255).round().to(torch.uint8), scene.label)
            if self._cache is not None:
                self._cache[index] = item
        img, label = item
        return (img.float() / 255 - self._mean) / self._std, label
