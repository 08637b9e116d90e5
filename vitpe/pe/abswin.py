"""Window-absolute position embedding (Bolya et al., "Window Attention is Bugged", ICLR 2024; timm hiera
``abs_win_pos_embed``, SAM2 ``Hiera._get_pos_embed``)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from timm.layers import trunc_normal_

from .base import PositionalEncoding
from .common import add_to_patches, cached_resample, check_bool, resample_table, table_shape
from .registry import register_pos_encoding


@register_pos_encoding
class AbsWinPE(PositionalEncoding):
    """P = interp(G -> grid) + tile(W_win). Only the global table G is interpolated; the window table keeps its
    size and is tiled (cropped where the grid is not a multiple of the window), so it stays aligned with a
    fixed window size.

    3D (T, H, W): G over (T, H, W) and a (w_t, w_h, w_w) window tiled along all three axes; a 2D checkpoint
    inflates to a one-frame window (``inflate_state_dict``), so a clip of one frame gives the 2D output.

    Options:
        window_size: size of the tiled window table (default 7 per axis, capped at the reference grid; in a model
            with window attention, the attention window when that does not align; a checkpoint loads with its own).
            With window attention the attention window must be a multiple of it, so that every attention
            window sees the same tiles (the alignment the paper is about); otherwise the forward raises.
        global_size: size of the global table (default: the reference grid).
        antialias: antialias when G shrinks (True: timm hiera, the reference our benchmark and parity test
            use; False: SAM2, which resizes with plain bicubic, a = -0.75).
    """
    name = 'abswin'
    hooks = frozenset({'tokens'})

    def __init__(self, *, window_size: Optional[Sequence[int]] = None, global_size: Optional[Sequence[int]] = None,
                 antialias: bool = True, **common):
        super().__init__(**common)
        check_bool(self.name, 'antialias', antialias)
        self.window_option = window_size
        window_size = self._size_option('window_size', window_size, tuple(min(7, s) for s in self.grid_size))
        global_size = self._size_option('global_size', global_size, self.grid_size)
        self.interpolation, self.antialias = 'bicubic', antialias
        self.pos_embed = nn.Parameter(torch.zeros(1, *global_size, self.dim))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, *window_size, self.dim))
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.pos_embed_window, std=.02)

    @property
    def interpolates_tables(self) -> bool:
        return True

    def _size_option(self, option, value, default):
        if value is None:
            return tuple(default)
        value = (value,) * self.rank if isinstance(value, int) else tuple(value)
        if len(value) != self.rank or any((not isinstance(v, int)) or v <= 0 for v in value):
            raise ValueError(f"abswin: invalid {option}={value!r}; expected {self.rank} positive integers")
        return value

    def embedding(self, shape, interpolation: Optional[str] = None) -> torch.Tensor:
        """(1, prod(shape), D): global part resampled plus window part tiled."""
        win = self.pos_embed_window
        reps = [math.ceil(s / w) for s, w in zip(shape, table_shape(self, 'pos_embed_window'))]
        tiled = win.repeat(1, *reps, 1)[(slice(None),) + tuple(slice(0, s) for s in shape)]
        glob = cached_resample(self, self.pos_embed, shape, interpolation or self.interpolation, self.antialias,
                               table_shape(self, 'pos_embed'))
        return (glob + tiled).flatten(1, -2)

    def set_attention_window(self, window):
        """A default window table that does not align with the attention window is made anew at the window's
        size (at construction; a table that was given, loaded or aligns is kept, and a misaligned one raises)."""
        table = table_shape(self, 'pos_embed_window')
        if self.window_option is None and any(w % t for w, t in zip(window, table)):
            self.pos_embed_window = nn.Parameter(trunc_normal_(self.pos_embed_window.new_zeros(1, *window, self.dim),
                                                               std=.02))
        self.check_alignment(window)

    def check_alignment(self, window) -> None:
        table = table_shape(self, 'pos_embed_window')
        if any(w % t for w, t in zip(window, table)):
            raise ValueError(f"abswin: the attention window {tuple(window)} is not a multiple of the window table "
                             f"{table}, so the tiled table would not align with the attention windows; choose "
                             f"a window that is a multiple of {table}")

    def tokens(self, x, ctx):
        if ctx.window is not None:
            self.check_alignment(ctx.window.grid.shape)
        return add_to_patches(x, self.embedding(ctx.grid.shape, ctx.strategy.interpolation), ctx.grid.num_prefix)

    def inflate_state_dict(self, state_dict, prefix, mode='central'):
        """The global table repeated over the frames of this model's global table; the window table gets a window
        of one frame (so it is tiled over every frame, and a checkpoint brings its window size)."""
        glob, win = state_dict.get(prefix + 'pos_embed'), state_dict.get(prefix + 'pos_embed_window')
        if glob is not None and glob.ndim == 4:
            state_dict[prefix + 'pos_embed'] = glob.unsqueeze(1).repeat(1, self.pos_embed.shape[1], 1, 1, 1)
        if win is not None and win.ndim == 4:
            state_dict[prefix + 'pos_embed_window'] = win.unsqueeze(1)

    def resize_state_dict(self, state_dict, prefix):
        """The global table is resampled to this model's; the window table is never resampled (it is tiled at
        its learned size): a checkpoint whose window differs (the default window is capped at the reference
        grid) brings its window size with it."""
        key = prefix + 'pos_embed'
        size = tuple(self.pos_embed.shape[1:-1])
        if key in state_dict and tuple(state_dict[key].shape[1:-1]) != size:
            state_dict[key] = resample_table(state_dict[key], size, self.interpolation, self.antialias)
        self.window_option = 'loaded'  # a later window attention keeps this table
        window = state_dict.get(prefix + 'pos_embed_window')
        if window is not None and window.shape != self.pos_embed_window.shape and window.ndim == self.rank + 2:
            self.pos_embed_window = nn.Parameter(self.pos_embed_window.new_zeros(window.shape),
                                                 requires_grad=self.pos_embed_window.requires_grad)
