"""Converters of checkpoints from outside vitpe into a scheme's layout. A scheme names its converter in
``convert_checkpoint``; ``vitpe.models.convert.checkpoint_filter_fn`` (timm's ``pretrained_filter_fn``) calls it
for any checkpoint without a ``pos_enc.scheme`` entry. Each takes (state_dict, model) and returns a state dict."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

Sd = Dict[str, torch.Tensor]


def _grid_table(pos_embed: torch.Tensor, num_prefix: int, what: str):
    """Split a timm flat table (1, p + N, D) into prefix rows and a square (1, h, w, D) table."""
    n = pos_embed.shape[1] - num_prefix
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"{what}: pos_embed has {n} patch rows, which is not a square grid")
    prefix = pos_embed[:, :num_prefix] if num_prefix else None
    return prefix, pos_embed[:, num_prefix:].reshape(1, side, side, -1)


def adapt_layer_scale(sd: Sd, model: nn.Module) -> Sd:
    """Map LayerScale between checkpoint and model exactly: a missing gamma becomes ones; a gamma the
    model has no place for is folded into the preceding linear layer (attn.proj / mlp.fc2)."""
    for i, blk in enumerate(model.blocks):
        for ls, linear in (('ls1', 'attn.proj'), ('ls2', 'mlp.fc2')):
            key = f'blocks.{i}.{ls}.gamma'
            has_ls = not isinstance(getattr(blk, ls), nn.Identity)
            if key in sd and not has_ls:
                g = sd.pop(key)
                sd[f'blocks.{i}.{linear}.weight'] = sd[f'blocks.{i}.{linear}.weight'] * g[:, None]
                sd[f'blocks.{i}.{linear}.bias'] = sd[f'blocks.{i}.{linear}.bias'] * g
            elif key not in sd and has_ls:
                sd[key] = torch.ones_like(getattr(blk, ls).gamma)
    return sd


def _table_into(out: Sd, pos_embed: torch.Tensor, model: nn.Module, prefix_key: str, what: str) -> None:
    table = model.pos_enc.table
    num_prefix = table.prefix.shape[1] if table.prefix is not None else 0
    if pos_embed.shape[1] - num_prefix <= 0:
        raise ValueError(f"{what}: pos_embed with {pos_embed.shape[1]} rows does not fit this model")
    prefix, grid = _grid_table(pos_embed, num_prefix, what)
    out[prefix_key + 'weight'] = grid
    if prefix is not None:
        out[prefix_key + 'prefix'] = prefix


def from_timm_vit(sd: Sd, model: nn.Module) -> Sd:
    """timm ``VisionTransformer`` (vision_transformer.py) -> vitpe 'ape'. Names already agree except
    the flat position table, which becomes a grid table (plus prefix rows)."""
    out: Sd = {}
    for k, v in sd.items():
        if k == 'pos_embed':
            _table_into(out, v, model, 'pos_enc.table.', 'timm ViT checkpoint')
        else:
            out[k] = v
    return adapt_layer_scale(out, model)


def from_timm_eva(sd: Sd, model: nn.Module) -> Sd:
    """timm ``Eva`` RoPE-ViT models (eva.py ``vit_*_patch16_rope*``) -> vitpe 'rope_axial' / 'rope_mixed'
    (with ``ape=True`` for the ``_ape`` variants): gamma_1/2 -> LayerScale, rope.freqs -> pos_enc.freqs,
    separate q/v biases -> one qkv bias, flat APE (no prefix rows) -> grid table."""
    out: Sd = {}
    for k, v in sd.items():
        if k == 'pos_embed':
            if getattr(model.pos_enc, 'table', None) is None:
                raise ValueError("timm Eva checkpoint has an absolute position table (an '_ape' model) but this "
                                 f"model's scheme '{model.pos_enc.name}' was built without ape=True")
            _table_into(out, v, model, 'pos_enc.table.', 'timm Eva checkpoint')
        elif k == 'rope.freqs':
            out['pos_enc.freqs'] = v
        elif k.endswith('.gamma_1') or k.endswith('.gamma_2'):
            out[k[:-len('gamma_1')] + ('ls1.gamma' if k.endswith('1') else 'ls2.gamma')] = v
        elif k.endswith('attn.q_bias'):
            base = k[:-len('q_bias')]
            out[base + 'qkv.bias'] = torch.cat([v, torch.zeros_like(v), sd[base + 'v_bias']])
        elif k.endswith('attn.v_bias') or k.endswith('attn.k_bias'):
            continue
        else:
            out[k] = v
    return adapt_layer_scale(out, model)
