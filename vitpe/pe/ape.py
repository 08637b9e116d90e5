"""Learned absolute position embedding (ViT, Dosovitskiy et al. 2021; DeiT; timm ``VisionTransformer.pos_embed``)."""
from __future__ import annotations

from .base import PosContext, PositionalEncoding
from .common import INTERPOLATIONS_2D, LearnedTable
from .converters import from_timm_vit
from .registry import register_pos_encoding


@register_pos_encoding
class AbsolutePE(PositionalEncoding):
    """x <- x + P, P a table learned at the reference grid and resampled at any other grid.

    Options:
        embed_prefix: the prefix tokens (cls, registers) get their own learned rows (timm ViT),
            or none (timm ``no_embed_class``).
        interpolation: how the table is resampled at another grid (bicubic, bilinear, nearest, area).
        antialias: antialias when the table shrinks (True: timm's ``resample_abs_pos_embed``, whose ViT
            checkpoints this scheme loads with exact parity; False: DeiT's own code).
    """
    name = 'ape'
    hooks = frozenset({'tokens'})
    convert_checkpoint = staticmethod(from_timm_vit)

    def __init__(self, *, embed_prefix: bool = True, interpolation: str = 'bicubic', antialias: bool = True,
                 **common):
        super().__init__(**common)
        self.table = LearnedTable(self.grid_size, self.dim, self.num_prefix_tokens if embed_prefix else 0,
                                  interpolation, antialias, scheme=self.name)

    def tokens(self, x, ctx: PosContext):
        return self.table.add(self, x, ctx.grid, ctx.strategy)
