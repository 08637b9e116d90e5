"""Converters of checkpoints from outside vitpe into a scheme's layout. A scheme names its converter in
``convert_checkpoint``; ``vitpe.models.convert.checkpoint_filter_fn`` (timm's ``pretrained_filter_fn``) calls it
for any checkpoint without a ``pos_enc.scheme`` entry. Each takes (state_dict, model) and returns a state dict."""
from __future__ import annotations

import math
import re
from typing import Dict, Tuple

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


def _layer_scale_key(key: str):
    """``blocks.i.gamma_1`` / ``gamma_2`` (DeiT III, Eva) -> ``blocks.i.ls1.gamma`` / ``ls2.gamma``; else None."""
    for old, new in (('.gamma_1', '.ls1.gamma'), ('.gamma_2', '.ls2.gamma')):
        if key.endswith(old):
            return key[:-len(old)] + new
    return None


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
        elif _layer_scale_key(k):
            out[_layer_scale_key(k)] = v
        elif k.endswith('attn.q_bias'):
            base = k[:-len('q_bias')]
            out[base + 'qkv.bias'] = torch.cat([v, torch.zeros_like(v), sd[base + 'v_bias']])
        elif k.endswith('attn.v_bias') or k.endswith('attn.k_bias'):
            continue
        else:
            out[k] = v
    return adapt_layer_scale(out, model)


# ---------------------------------------------------------------------------------------------- authors' code
# Converters of the papers' own released checkpoints (one per pretrained tag, ``vitpe.models.convert.SOURCES``);
# the key layouts are described in models/README.md. Trunk names (patch_embed.proj, cls_token, blocks.i.norm1 /
# attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm, head) already agree with vitpe's.
_CREAM_RPE = re.compile(r'blocks\.(\d+)\.attn\.rpe_([qkv])\.(?:(rp_rows|rp_cols)\.)?lookup_table_(weight|bias)$')


def _need_table(model: nn.Module, what: str) -> None:
    if getattr(model.pos_enc, 'table', None) is None:
        raise ValueError(f"{what} has an absolute position table (pos_embed) but this model's scheme "
                         f"'{model.pos_enc.name}' was built without one (expected the '_ape' model / a learned table)")


def _stack_tables(found: Dict[str, Dict[Tuple[int, int], torch.Tensor]], model: nn.Module, what: str) -> Sd:
    """iRPE lookup tables per (layer, axis) -> pos_enc.<target>_table (depth, axes, heads, ...), checked."""
    out: Sd = {}
    pe = model.pos_enc
    for target, tables in found.items():
        key = f'pos_enc.{target}_table'
        expected = getattr(pe, f'{target}_table', None)
        if expected is None:
            raise ValueError(f"{what} has iRPE tables on '{target}' but the model's iRPE acts on on={pe.on!r} "
                             f"(build it with pos_enc_args=dict(on=...) naming every target of the checkpoint)")
        depth, axes = expected.shape[:2]
        if sorted(tables) != [(i, a) for i in range(depth) for a in range(axes)]:
            raise ValueError(f"{what}: iRPE tables on '{target}' for (block, axis) {sorted(tables)}; expected "
                             f"{depth} blocks x {axes} axes")
        value = torch.stack([torch.stack([tables[i, a] for a in range(axes)]) for i in range(depth)])
        if value.shape != expected.shape:
            raise ValueError(f"{what}: iRPE tables on '{target}' have shape {tuple(value.shape[2:])} per block "
                             f"(heads, ...); expected {tuple(expected.shape[2:])} (mode {pe.mode!r}, method "
                             f"{pe.method!r}, shared_head={pe.shared_head}, {pe.num_buckets} buckets + prefix)")
        out[key] = value
    return out


def from_cream_irpe(sd: Sd, model: nn.Module) -> Sd:
    """microsoft/Cream ``iRPE/DeiT-with-iRPE`` (rpe_vision_transformer.py) -> vitpe 'irpe' with ape=True.
    ``blocks.i.attn.rpe_{q,k,v}[.rp_rows|.rp_cols].lookup_table_{weight,bias}`` (heads|1, d, buckets + 1) for q / k,
    (heads|1, buckets + 1, d) for v, (heads|1, buckets + 1) for bias mode; the extra bucket (the class token's)
    is last, as vitpe's prefix bucket -> ``pos_enc.<t>_table[i, axis]`` (rows axis 0, cols axis 1); DeiT's
    ``pos_embed`` (1, 1 + N, D) -> prefix row + grid table."""
    what = 'Cream iRPE checkpoint'
    out: Sd = {}
    found: Dict[str, Dict[Tuple[int, int], torch.Tensor]] = {}
    for k, v in sd.items():
        match = _CREAM_RPE.match(k)
        if match:
            layer, target, axis, _ = match.groups()
            found.setdefault(target, {})[int(layer), 1 if axis == 'rp_cols' else 0] = v
        elif k == 'pos_embed':
            _need_table(model, what)
            _table_into(out, v, model, 'pos_enc.table.', what)
        else:
            out[k] = v
    if not found:
        raise ValueError(f"{what}: no 'blocks.<i>.attn.rpe_<q|k|v>.lookup_table_*' entries; not a Cream iRPE "
                         f"checkpoint (keys start {sorted(sd)[:6]})")
    out.update(_stack_tables(found, model, what))
    return out


def from_lape(sd: Sd, model: nn.Module) -> Sd:
    """Ingrid725/LaPE (vision_transformer.py, ``pe='learnable', join_type='LaPE'``) -> vitpe 'lape' (base
    'learned'): ``blocks.i.pe_norm`` (the PE's LayerNorm of block i) -> ``pos_enc.norms.i``; ``pos_embed``
    (1, 1 + N, D) -> prefix row + grid table."""
    what = 'LaPE checkpoint'
    out: Sd = {}
    for k, v in sd.items():
        match = re.match(r'blocks\.(\d+)\.pe_norm\.(weight|bias)$', k)
        if match:
            out[f'pos_enc.norms.{match.group(1)}.{match.group(2)}'] = v
        elif k == 'pos_embed':
            _need_table(model, what)
            _table_into(out, v, model, 'pos_enc.table.', what)
        else:
            out[k] = v
    if not any(k.startswith('pos_enc.norms.') for k in out):
        raise ValueError(f"{what}: no 'blocks.<i>.pe_norm.*' entries; not a LaPE (join_type='LaPE') checkpoint")
    return out


def from_rope_vit(sd: Sd, model: nn.Module) -> Sd:
    """naver-ai/rope-vit ``deit/models_v2_rope.py`` (``rope_{axial,mixed}[_ape]_deit_*_patch16_LS``) -> vitpe
    'rope_axial' / 'rope_mixed': ``freqs`` (2, depth, heads * head_dim/2), axis 0 = x -> ``pos_enc.freqs``
    (2, depth, heads, head_dim/2); ``freqs_t_x`` / ``freqs_t_y`` (coordinates, recomputed) dropped;
    ``gamma_1`` / ``gamma_2`` -> LayerScale (folded into attn.proj / mlp.fc2 when the model has none);
    ``pos_embed`` (1, N, D), patch rows only -> grid table. Axial RoPE has no stored parameters."""
    what = 'RoPE-ViT checkpoint'
    pe = model.pos_enc
    mixed = 'freqs' in sd
    if mixed != (pe.name == 'rope_mixed'):
        found = 'RoPE-Mixed (it has freqs)' if mixed else "RoPE-Axial (it has no 'freqs')"
        raise ValueError(f"{what} is {found}; the model's scheme is '{pe.name}'")
    out: Sd = {}
    for k, v in sd.items():
        if k == 'freqs':
            if v.numel() != pe.freqs.numel():
                raise ValueError(f"{what}: freqs of shape {tuple(v.shape)}; expected {pe.freqs.shape[0]} x "
                                 f"{pe.freqs.shape[1]} x {pe.freqs.shape[2] * pe.freqs.shape[3]} (axes, depth, "
                                 f"heads x head_dim/2)")
            out['pos_enc.freqs'] = v.reshape(pe.freqs.shape)
        elif k in ('freqs_t_x', 'freqs_t_y'):
            continue
        elif k == 'pos_embed':
            _need_table(model, what)
            _table_into(out, v, model, 'pos_enc.table.', what)
        elif _layer_scale_key(k):
            out[_layer_scale_key(k)] = v
        else:
            out[k] = v
    return adapt_layer_scale(out, model)
