"""Image checkpoints in video models (inflation), and the refusal of the reverse.

A 2D checkpoint (patch kernel (D, C, p, p)) loaded into a video model (tubelet kernel (D, C, t, p, p)) is
inflated on load, by every loader (``load_state_dict``, timm's ``pretrained=True``, training's ``--initial``):

- the patch kernel gets a time axis: ``'central'`` (default; ViViT's central-frame initialisation, Arnab et al.
  2021, Sec. 3.4: the kernel on the middle frame of the tubelet, zeros elsewhere) or ``'average'`` (I3D's
  inflation, Carreira & Zisserman 2017: the kernel / t on every frame, so a clip of one repeated frame embeds as
  the image does), chosen with ``with vitpe.models.inflate.inflation('average'):``;
- the scheme's entries are made 3D by ``PositionalEncoding.inflate_state_dict``: tables extended along time,
  depthwise convolutions inflated as the patch kernel, new temporal parameters at zero (see each scheme).

A video checkpoint given to an image model is refused with a ``ValueError`` naming both kernels.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, Iterator

import torch
from torch import nn

from ..pe.common import INFLATIONS, check_choice, inflate_kernel

__all__ = ['INFLATIONS', 'inflation', 'inflate_state_dict', 'inflate_kernel', 'load_pre_hook']

_MODE: contextvars.ContextVar[str] = contextvars.ContextVar('vitpe_inflation', default='central')
KERNEL = 'patch_embed.proj.weight'


@contextlib.contextmanager
def inflation(mode: str) -> Iterator[str]:
    """Within the block, image checkpoints loaded into video models inflate their kernels with ``mode``
    ('central' or 'average')."""
    check_choice('inflation', 'mode', mode, INFLATIONS)
    token = _MODE.set(mode)
    try:
        yield mode
    finally:
        _MODE.reset(token)


def inflate_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module, prefix: str = '',
                       mode: str = None) -> Dict[str, torch.Tensor]:
    """Check a checkpoint's patch kernel against ``model`` (a vitpe ``VisionTransformer``) and, for an image
    checkpoint and a video model, inflate it in place (entries under ``prefix``). Returns ``state_dict``."""
    kernel = state_dict.get(prefix + KERNEL)
    embed = model.patch_embed
    if kernel is None or kernel.ndim == embed.rank + 2:
        return state_dict
    if kernel.ndim == 5 and embed.rank == 2:
        raise ValueError(f"checkpoint of a video model (tubelet kernel {tuple(kernel.shape[2:])}, {KERNEL} of shape "
                         f"{tuple(kernel.shape)}) cannot be loaded into an image model (patch kernel "
                         f"{embed.patch_size}): create the video model (vitpe_<size>_patch16_<scheme>_video_8x<img>)")
    if kernel.ndim != 4 or embed.rank != 3:
        raise ValueError(f"checkpoint {KERNEL} of shape {tuple(kernel.shape)}: expected (D, C, *{embed.patch_size})")
    mode = mode or _MODE.get()
    check_choice('inflation', 'mode', mode, INFLATIONS)
    state_dict[prefix + KERNEL] = inflate_kernel(kernel, embed.patch_size[0], mode)
    model.pos_enc.inflate_state_dict(state_dict, prefix + 'pos_enc.', mode)
    return state_dict


def load_pre_hook(module, state_dict, prefix, *args) -> None:
    """``VisionTransformer``'s load_state_dict pre-hook: ``inflate_state_dict`` on what is being loaded."""
    inflate_state_dict(state_dict, module, prefix)
