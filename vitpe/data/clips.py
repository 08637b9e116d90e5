"""Clips: the procedural shapes moving in continuous time (rendered at any frame count and size), and folders of
frames. Deterministic by seed; no downloads.

A clip is a scene whose shapes move along straight lines p(t) = p_0 + t v, t in [0, 1]; frame k of T shows time
(k + 0.5) / T, so the same clip can be rendered with 4, 8, 16 or 32 frames and at any pixel size.

Tasks (labels):
- ``order``: which comes first, the red shape or the blue one (``red_first``, ``blue_first``): each is seen for
  one window of the clip, of the same length, neither in the first or last frame; all shapes move. Needs the
  order of frames: a clip played backwards is a clip of the other label (``ClipScene.reversed``), so no frame,
  nor the unordered set of frames, tells the answer. Ordered frames within a tubelet can: one shape appearing
  or vanishing while the other is in view in the same patch (the two windows overlap in about 55 % of the clips),
  so a model without temporal positions reads part of the order from its unordered tubelets (the video study's
  NoPE runs: 0.74-0.79 at 8 frames against 0.99-1.00 for the schemes that learn the task; chance 0.5; at 4
  frames, two tubelets along t, almost all of it: 0.998). The video study's task
  (configs/study_video_order_8x32.yaml).
- ``direction``: which way the red shape moves (left, right, up, down), among shapes of other colours moving
  in random directions. Needs temporal order across frames (a clip played backwards is a clip of the opposite
  direction; no single frame, nor the unordered set of frames, gives it), but a tubelet of two frames sees the
  shape move: a video ViT reads it without any temporal position, so it does not test the positional scheme.
- ``kind``: the kind of the one red shape, all shapes moving: the control (any frame shows it; neither
  position nor order plays a part).

Folders of frames: ``root/[train|val]/class/clip/*.png|jpg`` (one folder of images per clip, frames in name
order), or of video files ``root/[train|val]/class/*.mp4`` (decoded with PyAV, an optional extra), sampled to T
frames evenly over the clip.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from .synthetic import COLOURS, KINDS, MEAN, STD, Scene, Shape, builtin_dataset, builtin_kind, render

CLIP_TASKS = {'order': ('red_first', 'blue_first'), 'direction': ('left', 'right', 'up', 'down'), 'kind': KINDS}
DIRECTIONS = ((-1., 0.), (1., 0.), (0., -1.), (0., 1.))  # unit square, y down: left, right, up, down
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov', '.webm')


@dataclass
class ClipScene:
    """A scene whose shapes move: shape i is at ``shapes[i]``'s centre + t * ``velocities[i]`` at time t, and is
    seen while t is in ``windows[i]`` = [start, end) (no windows: every shape is seen all the time)."""
    scene: Scene
    velocities: List[Tuple[float, float]]
    windows: Optional[List[Tuple[float, float]]] = None

    @property
    def label(self) -> int:
        return self.scene.label

    def _moved(self, t: float) -> Scene:
        moved = [replace(s, cx=s.cx + t * vx, cy=s.cy + t * vy) for s, (vx, vy) in zip(self.scene.shapes,
                                                                                        self.velocities)]
        return replace(self.scene, shapes=moved)

    def at(self, t: float) -> Scene:
        """The scene at time t in [0, 1]: the shapes seen at t, where they are at t."""
        scene = self._moved(t)
        if self.windows is None:
            return scene
        seen = [i for i, (start, end) in enumerate(self.windows) if start <= t < end]
        return replace(scene, shapes=[scene.shapes[i] for i in seen],
                       categories=[scene.categories[i] for i in seen])

    def reversed(self, task: str = 'direction') -> 'ClipScene':
        """The clip played backwards (time 1 - t); for ``direction`` its label is the opposite direction, for
        ``order`` the other shape comes first."""
        end = self._moved(1.0)
        label = self.label ^ 1 if task in ('direction', 'order') else self.label  # left <-> right, up <-> down
        windows = None if self.windows is None else [(1 - b, 1 - a) for a, b in self.windows]
        return ClipScene(replace(end, label=label), [(-vx, -vy) for vx, vy in self.velocities], windows)


def frame_times(num_frames: int) -> List[float]:
    """Frame k of T shows time (k + 0.5) / T (so a clip reversed in time shows the same frames, reversed)."""
    return [(k + 0.5) / num_frames for k in range(num_frames)]


def render_clip(clip: ClipScene, num_frames: int, size: Sequence[int]) -> torch.Tensor:
    """(3, T, H, W) in [0, 1]."""
    return torch.stack([render(clip.at(t), size) for t in frame_times(num_frames)], dim=1)


def _path(rng: np.random.Generator, radius: float, direction: Tuple[float, float], length: float):
    """A start so that the shape stays inside the unit square over the whole path."""
    lo = [radius - min(0., d * length) for d in direction]
    hi = [1 - radius - max(0., d * length) for d in direction]
    return [float(rng.uniform(a, b)) for a, b in zip(lo, hi)]


# ``order``: the red and the blue shape are each seen for one window of the same length (WINDOW of the clip), both
# inside [MARGIN, 1 - MARGIN], their starts at least GAP apart: so neither is seen in the first or last frame at 4
# frames or more (a shape seen from the start would give away that it came first), and at 4 frames already the
# first frame of each differs
WINDOW, MARGIN, GAP = (0.25, 0.35), 0.15, 0.25


def _order_windows(rng: np.random.Generator) -> Tuple[int, List[Tuple[float, float]]]:
    """(label, [red's window, blue's window]): starts drawn alike for both, then kept only if GAP apart
    (rejection keeps the draw symmetric in the two shapes and in time)."""
    length = float(rng.uniform(*WINDOW))
    while True:
        starts = rng.uniform(MARGIN, 1 - MARGIN - length, size=2)
        if abs(starts[0] - starts[1]) >= GAP:
            return int(starts[1] < starts[0]), [(float(a), float(a) + length) for a in starts]


def make_clip(task: str, seed: int) -> ClipScene:
    """The clip of ``task`` for ``seed`` (deterministic): 3 or 4 shapes, the first red, on a position-free
    background (plain or per-pixel noise), each moving 0.3-0.5 of the image along a straight line; the red one
    along one of the four directions (``direction``), the others in any direction. ``order``: the second shape is
    blue (the others neither red nor blue), and the two are seen one after the other (``_order_windows``)."""
    if task not in CLIP_TASKS:
        raise ValueError(f"unknown clip task {task!r}; expected one of {list(CLIP_TASKS)}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 5))
    radii = rng.uniform(0.07, 0.1, size=n)
    kinds = [int(rng.integers(len(KINDS))) for _ in range(n)]
    fixed = ('red', 'blue') if task == 'order' else ('red',)
    neutral = [c for c in COLOURS if c not in fixed]
    shapes, velocities = [], []
    move = int(rng.integers(4))
    for i in range(n):
        if i == 0 and task != 'order':
            direction = DIRECTIONS[move]
        else:
            a = rng.uniform(0, 2 * math.pi)
            direction = (math.cos(a), math.sin(a))
        length = float(rng.uniform(0.3, 0.5))
        cx, cy = _path(rng, radii[i], direction, length)
        colour = COLOURS[fixed[i] if i < len(fixed) else neutral[rng.integers(len(neutral))]]
        shapes.append(Shape(KINDS[kinds[i]], colour, cx, cy, float(radii[i]), float(rng.uniform(0, 2 * math.pi))))
        velocities.append((direction[0] * length, direction[1] * length))
    background = ('plain', 'noise')[int(rng.integers(2))]
    bg_colour = tuple(float(v) for v in rng.uniform(0.35, 0.6) + rng.uniform(-0.05, 0.05, size=3))
    label, windows = _order_windows(rng) if task == 'order' else (move if task == 'direction' else kinds[0], None)
    if windows is not None:  # the other shapes are seen all the time
        windows += [(-math.inf, math.inf)] * (n - len(windows))
    scene = Scene(shapes, background, bg_colour, (0., 0., 0.), seed, label, kinds)
    return ClipScene(scene, velocities, windows)


class SyntheticClips(Dataset):
    """``num_samples`` clips of ``task`` rendered with ``num_frames`` frames of ``img_size``, normalised with
    (MEAN, STD): items (3, T, H, W) and a label. Clips depend only on (seed, index): the same index at another
    frame count or size is the same clip. Rendered clips are cached as uint8."""

    SPLIT_SEEDS = {'train': 0, 'val': 10_000_000, 'test': 20_000_000}

    def __init__(self, task: str = 'order', num_frames: int = 8, img_size=64, num_samples: int = 1000,
                 split: str = 'train', seed: int = 0):
        if task not in CLIP_TASKS:
            raise ValueError(f"unknown clip task {task!r}; expected one of {list(CLIP_TASKS)}")
        if split not in self.SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(self.SPLIT_SEEDS)}")
        self.task, self.num_frames, self.num_samples = task, int(num_frames), num_samples
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.base_seed = self.SPLIT_SEEDS[split] + seed * 1_000_003
        self.classes = list(CLIP_TASKS[task])
        self._cache = {}
        self._mean, self._std = torch.tensor(MEAN)[:, None, None, None], torch.tensor(STD)[:, None, None, None]

    def __len__(self):
        return self.num_samples

    def clip(self, index: int) -> ClipScene:
        return make_clip(self.task, self.base_seed + index)

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        if index not in self._cache:
            clip = self.clip(index)
            frames = render_clip(clip, self.num_frames, self.img_size)
            self._cache[index] = ((frames * 255).round().to(torch.uint8), clip.label)
        frames, label = self._cache[index]
        return (frames.float() / 255 - self._mean) / self._std, label


class FrameFolder(Dataset):
    """Clips stored as folders of frames: ``root/class/clip/*.{png,jpg,...}``, frames in name order. Each item:
    ``num_frames`` frames sampled evenly over the clip (frame k of T at position (k + 0.5) / T of the clip, as
    the synthetic clips), resized to ``img_size``, normalised with ImageNet's mean and std: (3, T, H, W)."""
    layout = 'root/class/clip/<frames>.png'

    def __init__(self, root: str, num_frames: int, img_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 classes: Optional[Sequence[str]] = None):
        if not os.path.isdir(root):
            raise ValueError(f"clip folder {root!r} does not exist or is not a directory")
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        missing = [c for c in classes or () if c not in found]
        if missing:
            raise ValueError(f"classes {missing} are not folders of {root!r}")
        self.classes = list(classes) if classes else found  # ``classes``: those, in that order (as ImageFolder's)
        self.samples = [(clip, label) for label, cls in enumerate(self.classes)
                        for clip in self.clips(os.path.join(root, cls))]
        if not self.samples:
            raise ValueError(f"clip folder {root!r} holds no clips: expected {self.layout}")
        self.targets = [label for _, label in self.samples]
        self.num_frames = int(num_frames)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.mean, self.std = torch.tensor(mean)[:, None, None, None], torch.tensor(std)[:, None, None, None]

    @staticmethod
    def clips(folder: str) -> List:
        """The clips of one class folder: for each clip folder, its frame paths in name order."""
        out = []
        for clip in sorted(os.listdir(folder)):
            path = os.path.join(folder, clip)
            frames = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)) \
                if os.path.isdir(path) else []
            if frames:
                out.append([os.path.join(path, f) for f in frames])
        return out

    def frames(self, clip) -> List[Image.Image]:
        return [Image.open(p) for p in clip]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index: int):
        clip, label = self.samples[index]
        frames = self.frames(clip)
        picks = [frames[min(int(t * len(frames)), len(frames) - 1)] for t in frame_times(self.num_frames)]
        picks = [TF.to_tensor(TF.resize(f.convert('RGB'), list(self.img_size), antialias=True)) for f in picks]
        return (torch.stack(picks, dim=1) - self.mean) / self.std, label


class VideoFolder(FrameFolder):
    """Clips stored as video files, ``root/class/*.{mp4,avi,mkv,mov,webm}``, decoded with PyAV (the optional
    extra ``pip install vitpe[video]``; its wheel ships FFmpeg); frames sampled as ``FrameFolder``'s."""
    layout = 'root/class/<clip>.mp4'

    @staticmethod
    def clips(folder: str) -> List:
        return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(VIDEO_EXTENSIONS)]

    def frames(self, clip) -> List[Image.Image]:
        try:
            import av
        except ImportError:
            raise ImportError("reading video files needs PyAV: pip install av (or vitpe[video])") from None
        with av.open(clip) as container:
            return [frame.to_image() for frame in container.decode(video=0)]


def build_clip_dataset(spec: str, size: Sequence[int], split: str, num_samples=None, seed: int = 0) -> Dataset:
    """``clips:<task>``: the built-in clips at ``size`` = (T, H, W) (folders of clips: ``build_dataset``)."""
    if len(size) != 3:
        raise ValueError(f"clip data ({spec!r}) needs a clip size (frames, height, width), got {tuple(size)}: "
                         f"train a video model (num_frames)")
    if builtin_kind(spec) != 'clips':
        raise ValueError(f"{spec!r} renders images; a video model (clips of {size[0]} frames) needs clips: "
                         f"--data clips:<{'|'.join(CLIP_TASKS)}>, a folder of frames or of video files")
    return builtin_dataset(spec, CLIP_TASKS, size, split, num_samples, seed,
                           lambda task, n: SyntheticClips(task, size[0], size[1:], n, split=split, seed=seed))


def clip_folder(root: str, size: Sequence[int], classes: Optional[Sequence[str]] = None) -> FrameFolder:
    """One folder of clips at ``size`` = (T, H, W): ``VideoFolder`` when it holds video files, else
    ``FrameFolder``."""
    videos = os.path.isdir(root) and any(f.lower().endswith(VIDEO_EXTENSIONS) for _, _, files in os.walk(root)
                                         for f in files)
    return (VideoFolder if videos else FrameFolder)(root, size[0], size[1:], classes=classes)


def video_frames(model_name: str, model_kwargs, num_frames=None):
    """The clip length a run trains with: ``num_frames`` if given, else the model's (``model_kwargs``, or its
    zoo entry's); None for an image model."""
    from ..models.zoo import ZOO
    return num_frames or (model_kwargs or {}).get('num_frames') or ZOO.get(model_name, {}).get('num_frames')


def data_size(cfg):
    """What a training config's data is rendered at: (T, H, W) for video (``cfg.num_frames``), else the size."""
    return (cfg.num_frames, cfg.img_size, cfg.img_size) if cfg.num_frames else cfg.img_size


def with_frames(cfg, model_name: str, model_kwargs):
    """``cfg`` with the clip length of a video run (``video_frames``), which also goes into ``model_kwargs``
    (so checkpoints rebuild the model at it); ``cfg`` as it is for an image model."""
    frames = video_frames(model_name, model_kwargs, cfg.num_frames)
    if frames:
        model_kwargs['num_frames'] = frames
    return cfg.replace(num_frames=frames)
