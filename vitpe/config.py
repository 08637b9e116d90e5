"""The training configuration: one dataclass that YAML files and the command line both fill.

Names follow timm's ``train.py`` where timm has the option (``--smoothing``, ``--initial-checkpoint``,
``--model-ema-decay``, ...). Precedence: command line over YAML (``--config``) over the defaults below.
Renamed options keep their old names as deprecated aliases (a ``FutureWarning``, shown to CLI users):

    --label-smoothing  -> --smoothing            --finetune -> --initial-checkpoint
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

# deprecated name -> field name (CLI flags with '-', YAML keys with '_')
ALIASES = {'label_smoothing': 'smoothing', 'finetune': 'initial_checkpoint'}
# (option, option that replaces it when set): one source (a YAML file, the command line) may set only one of them;
# either given on the command line (or as a from_yaml override) clears the other in the YAML file
REPLACES = (('lr', 'lr_base'), ('warmup_steps', 'warmup_epochs'))


def option(default=None, help: str = '', *, factory=None, hidden: bool = False, **cli):
    """A config field: its default, its ``--help`` line and extra ``add_argument`` keywords."""
    meta = {'help': help, 'hidden': hidden, 'cli': cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of ``train``; the YAML key and the field name are the same (``--img-size`` is ``img_size``)."""
    model: Optional[str] = option(None, 'timm model name, e.g. vitpe_tiny_patch16_rope_mixed_224 '
                                  '(not needed with --initial-checkpoint or --resume, which name the model)')
    model_kwargs: Dict[str, Any] = option(help='extra model arguments: JSON (\'{"depth": 6}\') or timm-style '
                                          'key=value pairs (depth=6 patch_size=8)', factory=dict, nargs='+')
    data: str = option('synthetic:position', 'synthetic:<position|quadrant|kind> or an ImageFolder path; video '
                       'models: clips:<order|direction|kind>, a folder of frames (root/[train|val]/class/clip/*.png) '
                       'or of video files (root/[train|val]/class/*.mp4, PyAV)')
    img_size: int = option(64, 'training resolution (pixels, square)')
    num_frames: Optional[int] = option(None, "video models: frames per clip (default: the model's, e.g. 8)")
    train_samples: Optional[int] = option(None, 'built-in data: training scenes or clips; folders: a random subset')
    val_samples: Optional[int] = option(None, 'built-in data: validation scenes or clips; folders: a random subset')
    epochs: int = option(10, 'epochs to train')
    batch_size: int = option(64, 'global batch over all processes (timm: per process)')
    opt: str = option('adamw', "timm optimizer name")
    opt_eps: Optional[float] = option(None, "optimizer epsilon (default: timm's for the optimizer: adamw 1e-8, "
                                      "lamb 1e-6; DeiT-III: 1e-8)")
    lr: float = option(1e-3, 'peak learning rate (on the command line it replaces the config\'s lr_base)')
    weight_decay: float = option(0.05, 'weight decay')
    sched: str = option('cosine', 'timm scheduler name (stepped per update)')
    warmup_steps: int = option(50, 'linear warm-up over this many updates, then the schedule (on the command line '
                               'it replaces the config\'s warmup_epochs)')
    min_lr: float = option(1e-5, 'lowest learning rate of the schedule')
    clip_grad: float = option(1.0, 'clip the gradient norm to this (0: off)')
    smoothing: float = option(0.0, 'label smoothing')
    mixup: float = option(0.0, 'mixup alpha (0: off)')
    cutmix: float = option(0.0, 'cutmix alpha (0: off)')
    model_ema: bool = option(False, 'keep an EMA of the weights (timm ModelEmaV3)')
    model_ema_decay: float = option(0.998, 'EMA decay per update')
    amp: bool = option(False, 'mixed precision (bf16 autocast)')
    workers: int = option(0, 'data loader worker processes')
    seed: int = option(0, 'random seed')
    output: str = option('runs/train', 'folder for checkpoints and logs')
    resume: Optional[str] = option(None, 'continue from a checkpoint (the flag alone: <output>/last.pth, '
                                   'or a fresh start when there is none yet)', nargs='?', const='auto')
    initial_checkpoint: Optional[str] = option(None, 'start from the weights of a vitpe training checkpoint '
                                               '(tables resized to --img-size; a new head for other classes)')
    inflation: str = option('central', "an image checkpoint (--initial-checkpoint, --pretrained) in a video model: "
                            "the patch kernel on the tubelet's central frame (ViViT) or averaged over it (I3D)",
                            choices=['central', 'average'])
    # -- image folders: timm's augmentation (timm.data.create_transform) and evaluation transforms; the split
    #    options (val_fraction, split_seed, classes) apply to folders of clips too
    aa: Optional[str] = option(None, "auto-augment policy: timm's rand-m9-mstd0.5-inc1 (DeiT), 3a (DeiT-III's "
                               "3-Augment) or any timm --aa string (image folders)")
    color_jitter: float = option(0.0, 'colour jitter strength for brightness, contrast and saturation (0: off; '
                                 'with --aa only for 3a, as timm)')
    scale: List[float] = option(help='random-resized-crop area range (image folders)', factory=lambda: [0.08, 1.0],
                                nargs=2)
    ratio: List[float] = option(help='random-resized-crop aspect range (image folders)',
                                factory=lambda: [3 / 4, 4 / 3], nargs=2)
    hflip: float = option(0.5, 'horizontal flip probability (image folders)')
    vflip: float = option(0.0, 'vertical flip probability (image folders)')
    reprob: float = option(0.0, 'random erasing probability (image folders)')
    remode: str = option('pixel', "random erasing fill: pixel, rand or const (image folders)")
    recount: int = option(1, 'random erasing: most rectangles per image (image folders)')
    train_interpolation: str = option('bilinear', 'training resize interpolation: bilinear, bicubic or random '
                                      '(image folders)')
    interpolation: Optional[str] = option(None, "evaluation resize interpolation (image folders; default: the "
                                          "model's, timm)")
    crop_pct: Optional[float] = option(None, "evaluation: resize to img_size / crop_pct, then centre crop "
                                       "(image folders; default: the model's, 0.9 for the vitpe zoo)")
    val_fraction: float = option(0.0, 'a folder without val/: hold out this fraction of each class for validation '
                                 '(0: refuse to train on such a folder)')
    split_seed: int = option(0, 'seed of the --val-fraction split (the same split for every --seed)')
    classes: Optional[List[str]] = option(None, 'train and validate on these class folders only', nargs='+')
    aug_repeats: int = option(0, 'repeated augmentation: each image this many times per epoch, each copy on '
                              "another process where there are several (timm's RepeatAugSampler; DeiT: 3; 0: off; "
                              "image folders)")
    # -- optimisation
    drop_path: float = option(0.0, 'stochastic depth (timm drop_path_rate): the last block\'s rate, ramped from 0 '
                              '(--drop-path-mode linear), or every block\'s (constant)')
    drop_path_mode: str = option('linear', "stochastic depth per block: linear (from 0 to --drop-path; timm, DeiT) or "
                                 "constant (--drop-path in every block; DeiT-III; vitpe models)")
    layer_decay: Optional[float] = option(None, 'layer-wise learning-rate decay (timm): block i (from 0) of L '
                                          'gets lr * layer_decay ** (L - i), the stem ** (L + 1), the head lr')
    grad_accum_steps: int = option(1, 'micro-batches per update (batch_size stays the global batch per update)')
    warmup_epochs: Optional[float] = option(None, 'warm-up in epochs (replaces --warmup-steps; both in one config '
                                            'or command line: an error)')
    lr_base: Optional[float] = option(None, 'learning rate per --lr-base-size images: when set, '
                                      'lr = lr_base * batch_size / lr_base_size (replaces --lr; both in one config '
                                      'or command line: an error)')
    lr_base_size: int = option(256, 'global batch at which --lr-base is the learning rate')
    bce_loss: bool = option(False, 'binary cross-entropy on the (mixed) targets instead of softmax cross-entropy')
    bce_target_thresh: Optional[float] = option(None, 'binary cross-entropy: targets above this become 1 '
                                                '(DeiT-III: 0.0)')
    channels_last: bool = option(False, 'channels-last memory format for the model and the inputs')
    pretrained: bool = option(False, "start from the model's pretrained weights: --pretrained-path, else timm's "
                              'cache (nothing is downloaded)')
    pretrained_path: Optional[str] = option(None, 'weights file for --pretrained (timm, authors\' or vitpe; '
                                            'converted to the scheme)')
    max_steps_per_epoch: Optional[int] = option(None, 'cap on updates per epoch (tests)', hidden=True)
    quiet: bool = option(False, 'no progress bars or per-epoch lines')

    def __post_init__(self):
        check_values(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = 'config') -> 'TrainConfig':
        """A config from a mapping (YAML keys); unknown keys, values of the wrong type and options that replace
        each other (``REPLACES``) given together raise ValueError."""
        values = _rename_aliases(dict(values), source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source} has unknown keys {unknown}")
        for old, new in REPLACES:
            if values.get(old) is not None and values.get(new) is not None:
                raise ValueError(f"{source} sets both {old} and {new}; {new} would replace {old}: give one")
        hints = typing.get_type_hints(cls)
        return cls(**{k: check_type(k, v, hints[k], source) for k, v in values.items()})

    @classmethod
    def from_yaml(cls, path: str, **overrides) -> 'TrainConfig':
        """A config from a YAML file; ``overrides`` (field names) take precedence over the file."""
        source = f"config {path!r}"
        return cls.from_dict(merge(_rename_aliases(read_yaml(path), source), overrides), source=source)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> 'TrainConfig':
        return dataclasses.replace(self, **changes)


def check_values(cfg: TrainConfig) -> None:
    """Values no training can use, and two sources of the starting weights, raise ValueError naming them."""
    if (cfg.pretrained or cfg.pretrained_path) and cfg.initial_checkpoint:
        weights = cfg.pretrained_path or "the model's pretrained weights"
        raise ValueError(f"--pretrained / --pretrained-path ({weights}) and --initial-checkpoint "
                         f"({cfg.initial_checkpoint}) both give the starting weights: give one")
    if cfg.grad_accum_steps <= 0:
        raise ValueError(f"grad_accum_steps must be 1 or more, got {cfg.grad_accum_steps}")
    if cfg.crop_pct is not None and cfg.crop_pct <= 0:
        raise ValueError(f"crop_pct must be positive (the centre crop's share of the resized image), "
                         f"got {cfg.crop_pct}")
    if cfg.inflation not in ('central', 'average'):
        raise ValueError(f"inflation must be 'central' or 'average', got {cfg.inflation!r}")
    if cfg.drop_path_mode not in ('linear', 'constant'):
        raise ValueError(f"drop_path_mode must be 'linear' or 'constant', got {cfg.drop_path_mode!r}")


def merge(values: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` (a YAML file) updated by ``overrides`` (the command line); an override of one option of a
    ``REPLACES`` pair drops the other from ``values`` (``--lr`` over a config's lr_base)."""
    out = dict(values)
    for pair in REPLACES:
        for given, other in (pair, pair[::-1]):
            if given in overrides and other not in overrides:
                out.pop(other, None)
    return {**out, **overrides}


def read_yaml(path: str) -> Dict[str, Any]:
    """The mapping at the top of a YAML file (an empty file is an empty mapping)."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config {path!r} must hold a mapping of option: value, not a {type(values).__name__}")
    return values


def _rename_aliases(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Deprecated keys renamed to their fields (with a FutureWarning)."""
    for old, new in ALIASES.items():
        if old in values:
            warnings.warn(f"{source}: {old} is deprecated; use {new}", FutureWarning, stacklevel=3)
            if new in values:
                raise ValueError(f"{source} gives both {old} and {new} (the same option)")
            values[new] = values.pop(old)
    return values


def _optional_inner(hint):
    """int for Optional[int]; anything else as it is."""
    if typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _base_type(hint) -> type:
    """int for int and Optional[int]; dict for Dict[str, Any]; list for List[float]."""
    hint = _optional_inner(hint)
    return typing.get_origin(hint) or hint


def check_type(name: str, value: Any, hint, source: str = 'config') -> Any:
    """``value`` as the field's type: ints widen to floats, YAML's '1e-3' (a string) becomes a float; any
    other mismatch raises ValueError naming the key, the expected type and the value."""
    optional = type(None) in typing.get_args(hint)
    if value is None and optional:
        return None
    base = _base_type(hint)
    if base is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is list and isinstance(value, (list, tuple)):
        item = typing.get_args(_optional_inner(hint))[0]
        return [check_type(f"{name}[{i}]", v, item, source) for i, v in enumerate(value)]
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    expected = base.__name__ + (' or null' if optional else '')
    raise ValueError(f"{source}: {name} must be {expected}, got {type(value).__name__} {value!r}")


def parse_kwargs(values: List[str]) -> Dict[str, Any]:
    """``--model-kwargs`` values: one JSON object, or key=value pairs (values as Python literals, as timm)."""
    if len(values) == 1 and values[0].lstrip().startswith('{'):
        try:
            out = json.loads(values[0])
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"--model-kwargs is not valid JSON ({e}): {values[0]!r}") from None
        return out
    out = {}
    for item in values:
        key, sep, text = item.partition('=')
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--model-kwargs expects key=value or a JSON object, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text  # a bare word: a string, as timm's ParseKwargs
    return out


class _KwargsAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_kwargs(values))
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))


class _DeprecatedAlias(argparse.Action):
    """An old flag: warns, then stores into the new option's field."""

    def __init__(self, *args, new_flag: str = '', **kwargs):
        self.new_flag = new_flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated; use {self.new_flag}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def _argument(f: dataclasses.Field, hint) -> Dict[str, Any]:
    """``add_argument`` keywords for one field, derived from its type and metadata."""
    meta = f.metadata
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    kwargs: Dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, **meta['cli'])
    kwargs['help'] = argparse.SUPPRESS if meta['hidden'] else f"{meta['help']} (default: {default})"
    base = _base_type(hint)
    if base is bool:
        kwargs['action'] = argparse.BooleanOptionalAction
    elif base is dict:
        kwargs['action'] = _KwargsAction
    elif base is list:
        kwargs['type'] = typing.get_args(_optional_inner(hint))[0]
    else:
        kwargs['type'] = base
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/train.py``: one option per ``TrainConfig`` field, plus ``--config``."""
    p = argparse.ArgumentParser(description='Train or fine-tune a vitpe / timm model.')
    p.add_argument('-c', '--config', default=None,
                   help='YAML file of options (keys as the long options, with _); the command line overrides it')
    hints = typing.get_type_hints(TrainConfig)
    new_to_old = {new: old for old, new in ALIASES.items()}
    for f in dataclasses.fields(TrainConfig):
        kwargs = _argument(f, hints[f.name])
        p.add_argument(_flag(f.name), **kwargs)
        if f.name in new_to_old:
            alias = {k: v for k, v in kwargs.items() if k not in ('action', 'help')}
            p.add_argument(_flag(new_to_old[f.name]), action=_DeprecatedAlias, new_flag=_flag(f.name),
                           help=f"deprecated alias of {_flag(f.name)}", **alias)
    return p


def parse_config(argv: Optional[List[str]] = None) -> TrainConfig:
    """Command line (and the YAML it names) to a ``TrainConfig``: CLI over YAML over defaults."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    path = given.pop('config', None)
    values = read_yaml(path) if path else {}
    source = f"config {path!r}" if path else 'command line'
    values = _rename_aliases(values, source)
    for old, new in REPLACES:
        if old in given and new in given:
            parser.error(f"{_flag(old)} and {_flag(new)} both given; {_flag(new)} would replace {_flag(old)}: give one")
    cfg = TrainConfig.from_dict(merge(values, given), source=source)
    if not (cfg.model or cfg.initial_checkpoint or cfg.resume):
        parser.error('--model is required (or --initial-checkpoint / --resume, which name the model)')
    return cfg
