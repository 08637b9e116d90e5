"""timm's ``pretrained_filter_fn`` for vitpe models, and the checks of a pretrained file.

A vitpe checkpoint carries its scheme's name (``pos_enc.scheme``) and is used as is: the scheme's load
pre-hook resizes tables and refuses a checkpoint of another scheme by name. A model created with a pretrained
tag of an authors' source (``vitpe_small_patch16_irpe_ape_224.cream``; ``SOURCES``) converts with that source's
converter. Anything else is handed to the converter the model's scheme declares
(``PositionalEncoding.convert_checkpoint``, e.g. timm's ViT for 'ape').

An image checkpoint given to a video model is inflated (``vitpe.models.inflate``; central frame, or averaged
inside ``with vitpe.models.convert.inflation('average'):``), a video checkpoint given to an image model refused.
Then the trunk is checked against the model: patch size, width, depth and input channels must agree (a
``ValueError`` naming what was expected and what was found). A patch kernel of another size is resampled
(timm's ``resample_patch_embed``) only when asked::

    with vitpe.models.convert.resample_patch():
        timm.create_model('vitpe_small_patch16_224', patch_size=14, pretrained=True,
                          pretrained_cfg_overlay=dict(file='model.safetensors'))
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import Any, Dict, Optional

import torch
from timm.layers import resample_patch_embed
from torch import nn

from ..checkpoint import read_weights_file
from .inflate import inflate_state_dict, inflation  # noqa: F401  (inflation: how kernels get a time axis)
from ..errors import CheckpointError
from ..pe.converters import (adapt_layer_scale, from_cream_irpe, from_lape, from_rope_vit,  # noqa: F401
                             from_timm_eva, from_timm_vit)
from ..pe.registry import get_pos_encoding_class, list_pos_encodings

Sd = Dict[str, torch.Tensor]

# pretrained tag -> (converter of the authors' checkpoints, models that carry the tag as (sizes, zoo suffixes))
SOURCES = {
    'cream': (from_cream_irpe, (('tiny', 'small', 'base'), ('irpe_ape',))),
    'lape': (from_lape, (('tiny', 'small', 'base'), ('lape',))),
    'ropevit': (from_rope_vit, (('small', 'base'), ('rope_axial', 'rope_mixed', 'rope_axial_ape', 'rope_mixed_ape'))),
}
_RESAMPLE_PATCH: contextvars.ContextVar[bool] = contextvars.ContextVar('vitpe_resample_patch', default=False)


@contextlib.contextmanager
def resample_patch(enabled: bool = True):
    """Within this block, a pretrained patch kernel of another size is resampled to the model's patch size
    (timm's ``resample_patch_embed``) instead of refused."""
    token = _RESAMPLE_PATCH.set(enabled)
    try:
        yield
    finally:
        _RESAMPLE_PATCH.reset(token)


def checkpoint_filter_fn(state_dict: Sd, model: nn.Module) -> Sd:
    """vitpe checkpoints pass through; a tagged authors' source or a foreign checkpoint is converted; the trunk
    is checked against the model (``check_trunk``)."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError("not a state dict of tensors: expected a vitpe or timm checkpoint")
    state_dict = inflate_state_dict(dict(state_dict), model)  # image checkpoint -> video model; the reverse refused
    tag = (getattr(model, 'pretrained_cfg', None) or {}).get('tag')
    if 'pos_enc.scheme' in state_dict:
        return check_trunk(state_dict, model)
    if tag in SOURCES:
        return check_trunk(SOURCES[tag][0](state_dict, model), model)
    scheme = model.pos_enc.name
    convert = type(model.pos_enc).convert_checkpoint
    if convert is None:
        known = [s for s in list_pos_encodings() if get_pos_encoding_class(s).convert_checkpoint is not None]
        raise ValueError(f"checkpoint is not a vitpe checkpoint (no 'pos_enc.scheme' entry) and scheme '{scheme}' "
                         f"has no foreign source to convert from (schemes with one: {known}; the authors' "
                         f"checkpoints load through a pretrained tag: {sorted(SOURCES)})")
    return check_trunk(convert(state_dict, model), model)


def check_trunk(sd: Sd, model: nn.Module) -> Sd:
    """Refuse a checkpoint of another width, depth, input channels or patch size (resampling the patch kernel
    inside ``resample_patch()``). Three-channel kernels for a model of other channels are left to timm's
    ``adapt_input_conv``, as for every timm model."""
    kernel = sd.get('patch_embed.proj.weight')
    want = model.patch_embed.proj.weight
    if kernel is not None:
        if kernel.shape[0] != want.shape[0]:
            raise ValueError(f"checkpoint of width (embed_dim) {kernel.shape[0]}; this model's is {want.shape[0]}")
        if kernel.shape[1] != want.shape[1] and kernel.shape[1] != 3:
            raise ValueError(f"checkpoint for {kernel.shape[1]} input channels (in_chans); this model takes "
                             f"{want.shape[1]}")
        if kernel.shape[2:] != want.shape[2:]:
            sd = dict(sd, **{'patch_embed.proj.weight': _resampled(kernel, tuple(want.shape[2:]))})
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r'blocks\.(\d+)\.', k)] if m}
    if blocks and max(blocks) + 1 != len(model.blocks):
        raise ValueError(f"checkpoint of depth {max(blocks) + 1} (blocks); this model has {len(model.blocks)}")
    return sd


def _resampled(kernel: torch.Tensor, size: tuple) -> torch.Tensor:
    found = tuple(kernel.shape[2:])
    if not _RESAMPLE_PATCH.get():
        raise ValueError(f"checkpoint of patch size {found} (patch_embed.proj.weight kernel); this model's is "
                         f"{size}. To resample the kernel (timm's resample_patch_embed), create the model inside "
                         f"`with vitpe.models.convert.resample_patch():`")
    if len(size) != 2:
        raise ValueError(f"patch kernel {found} -> {size}: resampling is for 2D patch kernels only")
    return resample_patch_embed(kernel, list(size), verbose=False)


def check_pretrained_file(overlay: Optional[Dict[str, Any]]) -> None:
    """Before timm reads ``pretrained_cfg_overlay['file']``: a missing, truncated or non-checkpoint file, or one
    holding pickled objects (never unpickled), raises ``ValueError`` naming the problem (timm's own messages
    are an ``OSError`` or a ``KeyError``). Reads the file once more (safetensors: its header only)."""
    path = (overlay or {}).get('file')
    if not path:
        return
    if not os.path.isfile(path):
        raise ValueError(f"pretrained file {path!r} does not exist")
    try:
        read_weights_file(path, header_only=True)
    except CheckpointError as e:
        raise ValueError(f"pretrained file: {e}") from None
