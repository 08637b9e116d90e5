"""Window attention for the one trunk (ViTDet, Li et al. 2022; SAM; timm ``vision_transformer_sam``
``window_partition`` / ``window_unpartition``), for grids of any rank.

The patch grid is zero-padded at its end to a multiple of the window and cut into windows, batch major
(window ``b * num_windows + k`` is window ``k``, row major, of image ``b``), as timm and detectron2 do.
Two choices that ViTDet does not make, stated:

- padded tokens are *masked* as keys (ViTDet attends to them unmasked), so a real token's output does not
  depend on how much padding its window has, and their values are zero (a convolution over the window's
  values, LePE, sees the zero padding it would see on the cropped window);
- prefix tokens (class token, registers) join every window: every window attends to them, and their output is
  the mean of their outputs over the windows (one window: exactly global attention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowLayout:
    """How the patch grid ``grid`` is cut into windows of shape ``window`` (padded at the end of each axis)."""
    grid: Tuple[int, ...]
    window: Tuple[int, ...]

    @property
    def counts(self) -> Tuple[int, ...]:
        return tuple(-(-g // w) for g, w in zip(self.grid, self.window))  # ceil, in integers (symbolic sizes)

    @property
    def padded(self) -> Tuple[int, ...]:
        return tuple(c * w for c, w in zip(self.counts, self.window))

    @property
    def num_windows(self) -> int:
        return math.prod(self.counts)

    @property
    def has_padding(self) -> bool:
        """Whether the window does not divide the grid; always True when compiling or exporting, where sizes are
        symbolic and a branch on them would fix them (padding by 0 and masking nothing is then exact)."""
        return torch.compiler.is_compiling() or self.padded != self.grid

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C) on ``grid`` -> windows (B * num_windows, prod(window), C), zero padded."""
        rank, c = len(self.grid), x.shape[-1]
        x = x.reshape(-1, *self.grid, c)
        if self.has_padding:
            pad = [0, 0]
            for g, p in zip(reversed(self.grid), reversed(self.padded)):
                pad += [0, p - g]
            x = F.pad(x, pad)
        split = [d for n, w in zip(self.counts, self.window) for d in (n, w)]
        x = x.reshape(-1, *split, c)
        order = [0] + [1 + 2 * a for a in range(rank)] + [2 + 2 * a for a in range(rank)] + [1 + 2 * rank]
        return x.permute(order).reshape(-1, math.prod(self.window), c)

    def unpartition(self, x: torch.Tensor) -> torch.Tensor:
        """Windows (B * num_windows, prod(window), C) -> patch tokens (B, N, C), padding dropped."""
        rank, c = len(self.grid), x.shape[-1]
        x = x.reshape(-1, *self.counts, *self.window, c)
        order = [0] + [d for a in range(rank) for d in (1 + a, 1 + rank + a)] + [1 + 2 * rank]
        x = x.permute(order).reshape(-1, *self.padded, c)
        if self.has_padding:
            x = x[(slice(None),) + tuple(slice(0, g) for g in self.grid)]
        return x.reshape(-1, math.prod(self.grid), c)

    def split(self, x: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """Tokens (B, p + N, C) -> (B * num_windows, p + prod(window), C): each window with the prefix tokens."""
        windows = self.partition(x[:, num_prefix:])
        if not num_prefix:
            return windows
        prefix = x[:, None, :num_prefix].expand(-1, self.num_windows, -1, -1).reshape(-1, num_prefix, x.shape[-1])
        return torch.cat([prefix, windows], dim=1)

    def merge(self, x: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """Inverse of ``split``: the prefix tokens' outputs are averaged over the windows."""
        patches = self.unpartition(x[:, num_prefix:])
        if not num_prefix:
            return patches
        prefix = x[:, :num_prefix].reshape(-1, self.num_windows, num_prefix, x.shape[-1]).mean(1)
        return torch.cat([prefix, patches], dim=1)

    def padding(self, num_prefix: int, device=None) -> Optional[torch.Tensor]:
        """(num_windows, p + prod(window)) True at padded tokens, or None when the window divides the grid."""
        if not self.has_padding:
            return None
        real = self.partition(torch.ones(1, math.prod(self.grid), 1, device=device))[..., 0]
        return torch.cat([real.new_ones(self.num_windows, num_prefix), real], dim=1) == 0


def to_window(window_size, rank: int) -> Tuple[int, ...]:
    """A window option (int: the same on every axis, or one int per axis) as a tuple, validated."""
    window = (window_size,) * rank if isinstance(window_size, int) else tuple(window_size)
    if len(window) != rank or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in window):
        raise ValueError(f"invalid window_size={window_size!r}; expected a positive integer or {rank} of them")
    return window
