"""Training checkpoints: write atomically, read safely, describe; build the model a checkpoint holds.

A checkpoint is a dict of plain data and tensors (format ``vitpe-train-2``): ``model`` (state dict),
``model_name``, ``model_kwargs``, ``img_size``, ``num_classes``, ``classes``, ``data``, ``epoch`` (the
last finished one, from 0), ``best_acc``, ``val_acc``, ``num_updates``, ``optimizer``, ``scheduler``,
``ema``, ``rng`` (one entry per process) and ``config`` (the ``TrainConfig`` as a dict).

Reading never unpickles arbitrary objects (``torch.load(weights_only=True)``). Checkpoints of the first
format (``vitpe-train-1``, up to 75d2ea8) hold numpy's RNG state as an array: for them exactly the numpy
globals that state needs are allowed (on every read, as the format is only known once the file is read;
they rebuild arrays and run no code), and the state is converted on load.

With every new best epoch the model's weights are also written as ``model.safetensors`` (tensors only, with
the model's name, arguments and classes in the header): timm loads it with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='runs/x/model.safetensors'))``
and ``load_checkpoint`` / ``load_model`` read it as a checkpoint without the training state.

    python -m vitpe.checkpoint runs/x/best.pth      # what a checkpoint holds, in a few lines
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

FORMAT = 'vitpe-train-2'
READABLE_FORMATS = ('vitpe-train-1', FORMAT)
REQUIRED_KEYS = ('model', 'model_name', 'model_kwargs', 'img_size', 'num_classes')
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_FORMAT = 'vitpe-weights-1'
STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')  # where timm looks, in its order


def _numpy_rng_globals() -> List[Any]:
    """What unpickling numpy's legacy RNG state (a uint32 array) needs: the array, its dtype, and the
    reconstruct function under its numpy 2 and numpy 1 names."""
    core = getattr(np, '_core', None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct,
            (reconstruct, 'numpy.core.multiarray._reconstruct')]


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves half a checkpoint."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_weights(state_dict: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """A state dict as a safetensors file (every tensor its own contiguous copy), atomically; ``metadata``
    (strings) goes into the header."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata=dict(metadata or {}, format='pt'))
    os.replace(tmp, path)


def save_checkpoints(ckpt: Dict[str, Any], folder: str, is_best: bool) -> None:
    """``last.pth``; and, when the epoch is the best so far, ``best.pth`` and its weights as ``model.safetensors``."""
    save_checkpoint(ckpt, os.path.join(folder, 'last.pth'))
    if is_best:
        save_checkpoint(ckpt, os.path.join(folder, 'best.pth'))
        metadata = {'vitpe_format': WEIGHTS_FORMAT, 'model_name': ckpt['model_name'],
                    **{k: json.dumps(ckpt.get(k)) for k in ('model_kwargs', 'img_size', 'num_classes', 'classes',
                                                            'epoch', 'val_acc')}}
        save_weights(ckpt['model'], os.path.join(folder, WEIGHTS_FILE), metadata)


def _read_safetensors(path: str, header_only: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
            tensors = {} if header_only else {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path!r} could not be read as a safetensors file (truncated or not one: "
                              f"{type(e).__name__}: {e})") from None
    return tensors, metadata


def read_weights_file(path: str, header_only: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict in a weights file as timm reads it: a ``.safetensors`` file (with ``header_only``, its
    header is checked and nothing returned), or a torch file read safely, holding a state dict or a dict with one
    under one of ``STATE_DICT_KEYS``. Anything else raises ``CheckpointError`` saying what was found."""
    if str(path).endswith('.safetensors'):
        return _read_safetensors(path, header_only)[0]
    obj = _read(path)
    if isinstance(obj, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        obj = obj[key] if key else obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path!r} holds no state dict ({what}); expected a dict of tensors, or a dict with "
                              f"one under {list(STATE_DICT_KEYS)}")
    return obj


def _load_weights_file(path: str) -> Dict[str, Any]:
    """A ``model.safetensors`` written by training, as a checkpoint without the training state."""
    tensors, meta = _read_safetensors(path)
    if meta.get('vitpe_format') != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path!r} is a safetensors file without vitpe's header (vitpe_format "
                              f"{meta.get('vitpe_format')!r}, expected {WEIGHTS_FORMAT!r}): load it into a model "
                              f"with timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))")
    fields = {k: json.loads(meta[k]) for k in ('model_kwargs', 'img_size', 'num_classes', 'classes', 'epoch',
                                               'val_acc') if k in meta}
    return {'format': WEIGHTS_FORMAT, 'model': tensors, 'model_name': meta['model_name'], **fields}


def _read(path: str) -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL (\S+) was not an allowed global|but got <class '([^']+)'>", str(e))
        names = [a or b for a, b in found]
        if names:
            raise CheckpointError(
                f"checkpoint {path!r} holds pickled Python objects ({', '.join(names)}), not only tensors and "
                f"plain data; vitpe does not unpickle them (they can run code). If you trust the file, load it "
                f"with torch.load(weights_only=False) and save the plain parts again") from None
        raise CheckpointError(f"checkpoint {path!r} could not be read as a torch file: {e}") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path!r} could not be read as a torch file "
                              f"({type(e).__name__}: {e})") from None


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A vitpe training checkpoint (either format; RNG states in the current form), read safely;
    anything else raises ``CheckpointError`` saying what it is not. A ``.safetensors`` file written by training
    gives the weights and the model's description (format ``WEIGHTS_FORMAT``), no training state."""
    if str(path).endswith('.safetensors'):
        return _load_weights_file(path)
    ckpt = _read(path)
    fmt = ckpt.get('format') if isinstance(ckpt, dict) else None
    if fmt not in READABLE_FORMATS or any(k not in ckpt for k in REQUIRED_KEYS):
        what = f"format {fmt!r}" if fmt else f"a {type(ckpt).__name__}" + (
            f" with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict) else '')
        raise CheckpointError(f"{path!r} is not a vitpe training checkpoint ({what}; expected a dict with format "
                              f"in {list(READABLE_FORMATS)} and keys {list(REQUIRED_KEYS)})")
    if fmt == 'vitpe-train-1':
        ckpt['rng'] = [_upgrade_rng(r) for r in ckpt.get('rng', [])]
        ckpt.setdefault('config', ckpt.get('args', {}))
    return ckpt


# ---------------------------------------------------------------------------------------------- RNG states
def rng_state() -> Dict[str, Any]:
    """This process's torch, numpy and Python RNG states as tensors and plain values (safe to load)."""
    np_state = np.random.get_state(legacy=False)
    return {'torch': torch.get_rng_state(),
            'numpy': {'key': torch.from_numpy(np_state['state']['key'].astype(np.int64)),
                      'pos': int(np_state['state']['pos']), 'has_gauss': int(np_state['has_gauss']),
                      'gauss': float(np_state['gauss'])},
            'python': random.getstate()}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    n = state['numpy']
    torch.set_rng_state(state['torch'])
    np.random.set_state(('MT19937', n['key'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    random.setstate(state['python'])


def _upgrade_rng(state: Dict[str, Any]) -> Dict[str, Any]:
    """A ``vitpe-train-1`` RNG state (numpy's legacy tuple with an array) in the current form."""
    name, key, pos, has_gauss, gauss = state['numpy']
    if name != 'MT19937':
        raise CheckpointError(f"unexpected numpy bit generator {name!r} in a vitpe-train-1 checkpoint")
    numpy_state = {'key': torch.from_numpy(np.asarray(key).astype(np.int64)), 'pos': int(pos),
                   'has_gauss': int(has_gauss), 'gauss': float(gauss)}
    return {**state, 'numpy': numpy_state}


# ---------------------------------------------------------------------------------------------- models
def create_model(name: str, num_classes: int, img_size: int, model_kwargs: Dict[str, Any]) -> torch.nn.Module:
    """A timm model by name at ``img_size`` (unless ``model_kwargs`` says otherwise) with ``num_classes``."""
    kwargs = dict(model_kwargs)
    kwargs.setdefault('img_size', img_size)
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def load_model(path: str, device: torch.device = torch.device('cpu')) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The model of a training checkpoint, built at its training resolution, in eval mode; and the checkpoint."""
    ckpt = load_checkpoint(path)
    model = create_model(ckpt['model_name'], ckpt['num_classes'], ckpt['img_size'], ckpt['model_kwargs'])
    model.load_state_dict(ckpt['model'])
    return model.to(device).eval(), ckpt


def pretrained_file(model_name: str, path: Optional[str] = None) -> str:
    """The weights file to start ``model_name`` from: ``path`` when given, else the model's weights in timm's cache
    (Hugging Face hub cache or torch hub's checkpoints folder). Nothing is downloaded: weights that are not on
    this machine raise ``CheckpointError`` saying where they were looked for."""
    if path:
        if not os.path.isfile(path):
            raise CheckpointError(f"pretrained weights {path!r} do not exist")
        return path
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        raise CheckpointError(f"timm has no pretrained config for {model_name!r}; give the weights file with "
                              f"--pretrained-path")
    looked = []
    if cfg.file:
        looked.append(cfg.file)
        if os.path.isfile(cfg.file):
            return cfg.file
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        for name in dict.fromkeys(n for n in (cfg.hf_hub_filename, 'model.safetensors', 'pytorch_model.bin') if n):
            found = try_to_load_from_cache(cfg.hf_hub_id, name)
            if isinstance(found, str):
                return found
        looked.append(f"the Hugging Face cache (hf-hub:{cfg.hf_hub_id})")
    if cfg.url:
        cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(cfg.url.split('?')[0]))
        if os.path.isfile(cached):
            return cached
        looked.append(cached)
    where = f"looked in {', '.join(looked)}" if looked else 'its pretrained config names no weights'
    raise CheckpointError(f"no pretrained weights for {model_name!r} on this machine ({where}); vitpe downloads "
                          f"nothing (there is no model hub to reach here): give the file with --pretrained-path")


# ---------------------------------------------------------------------------------------------- describe
def scheme_of(state_dict: Dict[str, Any]) -> Optional[str]:
    """The positional scheme a vitpe state dict was trained with (its ``pos_enc.scheme`` bytes), or None."""
    name = state_dict.get('pos_enc.scheme')
    return bytes(name.tolist()).decode() if isinstance(name, torch.Tensor) else None


def describe_checkpoint(path: str) -> Dict[str, Any]:
    """What a training checkpoint holds, in a few fields (``epoch`` counts from 1, as in log.csv)."""
    ckpt = load_checkpoint(path)
    return {'path': path, 'format': ckpt['format'], 'model': ckpt['model_name'], 'scheme': scheme_of(ckpt['model']),
            'model_kwargs': ckpt['model_kwargs'], 'img_size': ckpt['img_size'], 'num_classes': ckpt['num_classes'],
            'data': ckpt.get('data'), 'epoch': ckpt.get('epoch', -1) + 1, 'updates': ckpt.get('num_updates'),
            'val_acc': ckpt.get('val_acc'), 'best_acc': ckpt.get('best_acc'), 'ema': ckpt.get('ema') is not None}


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m vitpe.checkpoint PATH [PATH ...]``: one block of ``key: value`` lines per checkpoint."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths or paths[0] in ('-h', '--help'):
        print('usage: python -m vitpe.checkpoint PATH [PATH ...]\n\n' + describe_checkpoint.__doc__)
        return 0 if paths else 2
    status = 0
    for path in paths:
        try:
            info = describe_checkpoint(path)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        print('\n'.join(f"{k}: {v}" for k, v in info.items()) + '\n')
    return status


if __name__ == '__main__':
    sys.exit(main())
