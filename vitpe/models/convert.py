"""timm's ``pretrained_filter_fn`` for vitpe models.

A vitpe checkpoint carries its scheme's name (``pos_enc.scheme``) and is used as is: the scheme's load
pre-hook resizes tables and refuses a checkpoint of another scheme by name. Anything else is handed to the
converter the model's scheme declares (``PositionalEncoding.convert_checkpoint``, e.g. timm's ViT for 'ape').
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..pe.converters import adapt_layer_scale, from_timm_eva, from_timm_vit  # noqa: F401  (old import path)
from ..pe.registry import get_pos_encoding_class, list_pos_encodings

Sd = Dict[str, torch.Tensor]


def checkpoint_filter_fn(state_dict: Sd, model: nn.Module) -> Sd:
    """vitpe checkpoints pass through; foreign ones are converted by the converter their scheme declares."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError("not a state dict of tensors: expected a vitpe or timm checkpoint")
    if 'pos_enc.scheme' in state_dict:
        return state_dict
    scheme = model.pos_enc.name
    convert = type(model.pos_enc).convert_checkpoint
    if convert is None:
        known = [s for s in list_pos_encodings() if get_pos_encoding_class(s).convert_checkpoint is not None]
        raise ValueError(f"checkpoint is not a vitpe checkpoint (no 'pos_enc.scheme' entry) and scheme '{scheme}' "
                         f"has no foreign source to convert from (schemes with one: {known})")
    return convert(state_dict, model)
