"""Decomposed relative position bias (MViTv2 ``cal_rel_pos_spatial``; ViTDet / SAM, timm
``vision_transformer_sam.get_decomposed_rel_pos_bias``): one table per axis of shape (2 size - 1, d),
logits_ij += <q_i, R_h[r_i - r_j]> + <q_i, R_w[c_i - c_j]> (+ <q_i, R_t[t_i - t_j]> in 3D), with q
unscaled. At another grid the tables are resampled linearly along their length, as SAM does."""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import trunc_normal_

from .base import PositionalEncoding, register_pos_encoding
from .functional import relative_index, resample_1d


def decomposed_bias(q: torch.Tensor, tables, shape) -> torch.Tensor:
    """q (B, N, d) of patch tokens on ``shape``; tables one (L_a, d) per axis. Returns (B, N, N)."""
    b, n, d = q.shape
    rank = len(shape)
    qg = q.reshape(b, *shape, d)
    out = 0
    for a, (size, table) in enumerate(zip(shape, tables)):
        rel = resample_1d(table, 2 * size - 1)[relative_index(size, size).to(table.device)]  # (size, size, d)
        # project q of every token on the relative vectors along axis a: (b, *shape, size_k)
        qa = qg.movedim(1 + a, -2)  # (b, ..., size_q, d)
        proj = torch.einsum('...qd,qkd->...qk', qa, rel.to(q.dtype)).movedim(-2, 1 + a)
        # broadcast over the key's other axes: key axis a only
        view = [b] + list(shape) + [1] * rank
        view[1 + rank + a] = size
        out = out + proj.reshape(view)
    return out.reshape(b, n, n)


@register_pos_encoding
class DecomposedRelPos(PositionalEncoding):
    """Options: zero_init (tables start at zero, as SAM; False draws them from N(0, 0.02))."""
    name = 'decomposed'

    def __init__(self, *, zero_init: bool = True, **common):
        super().__init__(**common)
        if not isinstance(zero_init, bool):
            raise ValueError(f"decomposed: invalid zero_init={zero_init!r}; expected True or False")
        self.tables = nn.ParameterList([
            nn.Parameter(torch.zeros(self.depth, 2 * s - 1, self.head_dim)) for s in self.grid_size])
        if not zero_init:
            for t in self.tables:
                trunc_normal_(t, std=.02)

    def bias(self, q, k, ctx, layer):
        p = ctx.grid.num_prefix
        b, h, n, d = q.shape
        bias = decomposed_bias(q[:, :, p:].reshape(b * h, n - p, d), [t[layer] for t in self.tables],
                               ctx.grid.shape).reshape(b, h, n - p, n - p)
        if p:  # no bias to or from prefix tokens
            bias = nn.functional.pad(bias, (p, 0, p, 0))
        return bias

    def resize_state_dict(self, state_dict, prefix):
        for a, size in enumerate(self.grid_size):
            key = f'{prefix}tables.{a}'
            if key in state_dict and state_dict[key].shape[1] != 2 * size - 1:
                t = state_dict[key]
                state_dict[key] = torch.stack([resample_1d(t[i], 2 * size - 1) for i in range(t.shape[0])])
