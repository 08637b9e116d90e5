"""NoPE: no positional information at all."""
from __future__ import annotations

from .base import PositionalEncoding
from .registry import register_pos_encoding


@register_pos_encoding
class NoPE(PositionalEncoding):
    """No positional information (NoPE). Patch embedding is a non-overlapping projection, so the model is
    blind to where a patch is; the control every other scheme is measured against."""
    name = 'none'

    def __init__(self, **common):
        super().__init__(**common)
