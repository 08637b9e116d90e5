"""Learned absolute position embedding (ViT, Dosovitskiy et al. 2021; DeiT; timm ``VisionTransformer.pos_embed``)."""
from __future__ import annotations

import torch

from .base import PosContext, PositionalEncoding
from .common import INTERPOLATIONS_2D, LearnedTable, add_to_patches, check_bool
from .converters import from_timm_vit
from .registry import ZooEntry, register_pos_encoding


@register_pos_encoding
class AbsolutePE(PositionalEncoding):
    """x <- x + P, P a table learned at the reference grid and resampled at any other grid.

    3D (T, H, W): one table over (T, H, W) (default), or with ``separable`` a spatial table over (H, W) plus a
    temporal one over T, P[t, h, w] = S[h, w] + P_t[t] (ViViT's factorised embedding, TimeSformer, VideoMAE-style
    video ViTs), each resampled along its own axes. The full table at T = 1 is the 2D table; the separable form
    at T = 1 adds the one temporal row P_t[0] to every patch (the 2D form when that row is zero, as a 2D
    checkpoint inflates it; tested).

    Options:
        embed_prefix: the prefix tokens (cls, registers) get their own learned rows (timm ViT),
            or none (timm ``no_embed_class``).
        interpolation: how the table is resampled at another grid (bicubic, bilinear, nearest, area).
        antialias: antialias when the table shrinks (True: timm's ``resample_abs_pos_embed``, whose ViT
            checkpoints this scheme loads with exact parity; False: DeiT's own code).
        separable: (video only) spatial + temporal tables instead of one (T, H, W) table.
    """
    name = 'ape'
    hooks = frozenset({'tokens'})
    zoo = (ZooEntry('ape'), ZooEntry('ape_sep', dict(separable=True), kinds=('video',)))
    convert_checkpoint = staticmethod(from_timm_vit)

    def __init__(self, *, embed_prefix: bool = True, interpolation: str = 'bicubic', antialias: bool = True,
                 separable: bool = False, **common):
        super().__init__(**common)
        check_bool(self.name, 'separable', separable)
        if separable and self.rank != 3:
            raise ValueError(f"ape: separable=True is for video (a (T, H, W) grid); this grid is {self.grid_size}")
        spatial = (1, 2) if separable else None
        self.table = LearnedTable(self.grid_size, self.dim, self.num_prefix_tokens if embed_prefix else 0,
                                  interpolation, antialias, scheme=self.name, axes=spatial)
        self.time_table = LearnedTable(self.grid_size, self.dim, 0, 'bilinear', scheme=self.name,
                                       axes=(0,)) if separable else None

    def inflate_state_dict(self, state_dict, prefix, mode='central'):
        """The full table repeated over the frames; separable: the 2D table is the spatial one, the temporal one
        starts at zero (so a clip of one frame embeds as the image)."""
        super().inflate_state_dict(state_dict, prefix, mode)
        if self.time_table is not None:
            state_dict.setdefault(prefix + 'time_table.weight', torch.zeros_like(self.time_table.weight))

    def tokens(self, x, ctx: PosContext):
        if self.time_table is None:
            return self.table.add(self, x, ctx.grid, ctx.strategy)
        t, h, w = ctx.grid.shape
        spatial = self.table.at(self, (h, w), ctx.strategy).unsqueeze(1)  # (1, 1, HW, D)
        temporal = self.time_table.at(self, (t,), ctx.strategy).unsqueeze(2)  # (1, T, 1, D)
        return add_to_patches(x, (spatial + temporal).flatten(1, 2), ctx.grid.num_prefix, self.table.prefix)
