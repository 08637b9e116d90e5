"""Non-overlapping patch (2D) or tubelet (3D) embedding that checks its input and reports the grid."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.fx
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from timm.layers import register_notrace_function


def to_tuple(value, rank: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ValueError(f"{name}={value} has {len(value)} entries, expected {rank}")
    return value


def clip_size(img_size, num_frames: Optional[int], rank: int) -> Tuple[int, ...]:
    """The reference input size of a model of ``rank`` (2: (H, W); 3: (T, H, W)). For video, ``img_size`` may be
    the frame size (an int or (H, W)) with ``num_frames`` the clip length; a (T, H, W) ``img_size`` whose T
    disagrees with ``num_frames`` is refused."""
    if num_frames is None:
        return to_tuple(img_size, rank, 'img_size')
    if rank != 3:
        raise ValueError(f"num_frames={num_frames} is for video models (a patch_size of 3 entries: tubelet, "
                         f"height, width); this model takes images")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"invalid num_frames={num_frames!r}; expected a positive integer")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) == 3:
        if size[0] != num_frames:
            raise ValueError(f"img_size={size} has {size[0]} frames but num_frames={num_frames}")
        size = size[1:]
    return (num_frames,) + to_tuple(size, 2, 'img_size')


@register_notrace_function  # a leaf for timm's FX tracer (features_only=True, feature_cls='fx')
def checked_input(x: torch.Tensor, patch_size: Tuple[int, ...], in_chans: int,
                  traced_grid: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
    """``x`` itself, after checking its rank and channels (and, in an FX-traced model, that it has the traced
    grid). A leaf under FX tracing (one call node, run on real tensors), so the checks raise clear errors in
    traced models too without Python branching on traced shapes."""
    rank = len(patch_size)
    if x.ndim != rank + 2:
        want = '(B, C, H, W)' if rank == 2 else '(B, C, T, H, W)'
        raise ValueError(f"expected input of shape {want}, got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {x.shape[1]} (input {tuple(x.shape)})")
    if traced_grid is not None:
        size = tuple(g * p for g, p in zip(traced_grid, patch_size))
        if tuple(x.shape[2:]) != size:
            raise ValueError(f"this FX-traced model takes inputs of size {size} (its grid {traced_grid} is fixed "
                             f"at tracing), got {tuple(x.shape[2:])}: call set_input_size before tracing")
    return x


torch.fx.wrap('checked_input')  # a leaf for any FX tracer (torchvision's create_feature_extractor)


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch size. ``patch_size`` of rank 2 takes images (B, C, H, W),
    rank 3 takes video (B, C, T, H, W). Any input size the patch divides works at run time."""

    def __init__(self, img_size: Sequence[int], patch_size: Sequence[int], in_chans: int, embed_dim: int,
                 bias: bool = True):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.rank = len(self.patch_size)
        self.in_chans = in_chans
        conv = {2: nn.Conv2d, 3: nn.Conv3d}.get(self.rank)
        if conv is None:
            raise ValueError(f"patch_size={patch_size} must have 2 (image) or 3 (video) entries")
        self.proj = conv(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        self.set_input_size(img_size)

    def set_input_size(self, img_size: Sequence[int]) -> None:
        self.img_size = tuple(img_size)
        self.grid_size = self.grid_for(self.img_size)
        self.num_patches = 1
        for g in self.grid_size:
            self.num_patches *= g

    def grid_for(self, size: Sequence[int]) -> Tuple[int, ...]:
        size = tuple(size)  # ints, or symbolic sizes under torch.export / compile (int() would specialise them)
        if len(size) != self.rank:
            kind = 'image (H, W)' if self.rank == 2 else 'video (T, H, W)'
            raise ValueError(f"input size {size} has {len(size)} spatial axes, this model takes {kind}")
        bad = [(s, p) for s, p in zip(size, self.patch_size) if s % p or s <= 0]
        if bad and self.rank == 3 and (size[0] % self.patch_size[0] or size[0] <= 0):
            raise ValueError(f"{size[0]} frames (input size {size}) is not divisible by the tubelet "
                             f"{self.patch_size[0]} (patch size {self.patch_size}): the frame count must be a "
                             f"positive multiple of {self.patch_size[0]}")
        if bad:
            raise ValueError(f"input size {size} is not divisible by the patch size {self.patch_size}: "
                             f"every axis must be a positive multiple of its patch size")
        return tuple(s // p for s, p in zip(size, self.patch_size))

    def forward(self, x: torch.Tensor):
        """(B, C, *size) -> tokens (B, N, D) and the grid. Under FX symbolic tracing the grid is the reference
        grid (``img_size``; ``set_input_size`` changes it), as in timm's ViT without a dynamic size."""
        if is_fx_symbolic_tracing():
            return self.proj(checked_input(x, self.patch_size, self.in_chans, self.grid_size)).flatten(2).transpose(
                1, 2), self.grid_size
        x = checked_input(x, self.patch_size, self.in_chans)
        grid = self.grid_for(x.shape[2:])
        return self.proj(x).flatten(2).transpose(1, 2), grid
