"""The vitpe zoo in timm, derived from the scheme registry: every ``ZooEntry`` a scheme declares gives
``vitpe_<size>_patch16_<suffix>_<img>`` for each of its sizes, registered with ``timm.models.register_model``
(also for schemes registered after ``import vitpe``), so ``timm.create_model('vitpe_small_patch16_rope_mixed_224')``
works. All entries share one trunk recipe (DeiT: class token, token pooling, qkv bias, no LayerScale); only the
scheme changes. ``vitpe_<size>_patch16_<img>`` takes any scheme with ``pos_enc=``.

Video models (a ``ZooEntry`` of kind 'video'): ``vitpe_<size>_patch16_<suffix>_video_8x<img>``, the same trunk on
clips of 8 frames with a 2 x 16 x 16 tubelet (``VIDEO``), input (B, 3, T, H, W); ``num_frames=`` and ``img_size=``
(the frame size) change the reference clip; ``vitpe_<size>_patch16_video_8x<img>`` takes any scheme."""
from __future__ import annotations

import sys
from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..pe.registry import on_register
from ..layers.patch_embed import clip_size
from .convert import SOURCES, check_pretrained_file, checkpoint_filter_fn
from .vision_transformer import VisionTransformer

# size -> trunk dimensions and reference image size; 'micro' is the study's model (a 4 x 4 grid at 64 px)
SIZES: Dict[str, Dict[str, Any]] = {
    'micro': dict(embed_dim=128, depth=4, num_heads=4, img_size=64),
    'tiny': dict(embed_dim=192, depth=12, num_heads=3, img_size=224),
    'small': dict(embed_dim=384, depth=12, num_heads=6, img_size=224),
    'base': dict(embed_dim=768, depth=12, num_heads=12, img_size=224),
}
TRUNK = dict(patch_size=16, mlp_ratio=4., qkv_bias=True, class_token=True, global_pool='token')
VIDEO = dict(num_frames=8, patch_size=(2, 16, 16))  # the video trunk: 8 frames, tubelets of 2 x 16 x 16
ZOO: Dict[str, Dict[str, Any]] = {}  # model name -> constructor arguments
default_cfgs: Dict[str, Any] = {}  # read by timm's register_model (a dict, or a DefaultCfg with tags)


def model_name(size: str, suffix: str = '', kind: str = 'image') -> str:
    clip = f"video_{VIDEO['num_frames']}x" if kind == 'video' else ''
    return f"vitpe_{size}_patch16_{suffix + '_' if suffix else ''}{clip}{SIZES[size]['img_size']}"


def model_args(size: str, kind: str = 'image', **scheme) -> Dict[str, Any]:
    """Constructor arguments of the zoo model of ``size`` and ``kind`` ('image' or 'video')."""
    return dict(TRUNK, **SIZES[size], **(VIDEO if kind == 'video' else {}), **scheme)


def clip_cfg(args: Dict[str, Any]) -> Dict[str, Any]:
    """What a video model (of constructor ``args``) adds to its ``pretrained_cfg`` (timm's ``input_size`` is one
    frame, (C, H, W), as timm's data pipeline transforms frames): ``num_frames`` and ``clip_size`` (C, T, H, W).
    Nothing for an image model."""
    patch = args.get('patch_size', 16)
    if isinstance(patch, int) or len(tuple(patch)) != 3:
        return {}
    size = clip_size(args.get('img_size', 224), args.get('num_frames'), 3)
    return {'num_frames': size[0], 'clip_size': (args.get('in_chans', 3), *size)}


def _cfg(args: Dict[str, Any]) -> Dict[str, Any]:
    clip = f", clips of {args['num_frames']} frames" if args.get('num_frames') else ''
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, args['img_size'], args['img_size']), 'pool_size': None,
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'fixed_input_size': False, 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0',
        'description': f"positional scheme: {args.get('pos_enc', 'any (pos_enc=, default ape)')}{clip}",
    }


def _create(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    if pretrained:
        check_pretrained_file(kwargs.get('pretrained_cfg_overlay'))
    model = build_model_with_cfg(
        VisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)
    if isinstance(getattr(model, 'pretrained_cfg', None), dict):
        model.pretrained_cfg.update(clip_cfg(kwargs))
    return model


def _make_entry(name: str, model_args: Dict[str, Any]):
    fixed_scheme = model_args.get('pos_enc')

    def entry(pretrained: bool = False, **kwargs) -> VisionTransformer:
        args = dict(model_args)
        if fixed_scheme is not None and kwargs.get('pos_enc', fixed_scheme) != fixed_scheme:
            raise ValueError(f"{name} is the '{fixed_scheme}' model; pos_enc={kwargs['pos_enc']!r} is not allowed "
                             f"here (use {name.split('_patch')[0]}_patch16_<img> with pos_enc=...)")
        if fixed_scheme is not None:
            kwargs.pop('pos_enc', None)
        user_pe_args = kwargs.pop('pos_enc_args', None) or {}
        args['pos_enc_args'] = dict(args.get('pos_enc_args') or {}, **user_pe_args)
        return _create(name, pretrained, **dict(args, **kwargs))

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    scheme = fixed_scheme or "chosen with pos_enc= (default 'ape')"
    entry.__doc__ = (f"vitpe ViT ({model_args['embed_dim']} wide, {model_args['depth']} deep), "
                     f"positional scheme: {scheme}.")
    return entry


def _register(name: str, args: Dict[str, Any]) -> None:
    ZOO[name] = args
    cfg = _cfg(args)
    tags = [tag for tag, (_, (sizes, suffixes)) in SOURCES.items()
            if name in {model_name(size, suffix) for size in sizes for suffix in suffixes}]
    # the untagged cfg stays the default (no weights); each tag names the authors' source its converter reads
    default_cfgs[name] = generate_default_cfgs({name: cfg, **{f'{name}.{tag}': dict(
        cfg, description=f"{cfg['description']}; converted from the authors' checkpoint ({tag})")
        for tag in tags}})[name] if tags else cfg
    setattr(sys.modules[__name__], name, register_model(_make_entry(name, args)))


def register_scheme_models(cls) -> None:
    """Register the zoo entries a scheme declares (called by the registry for every scheme); a model name that
    is already taken, or an unknown size, raises ValueError before anything is registered."""
    models = {}
    for entry in cls.zoo:
        unknown = set(entry.sizes) - set(SIZES)
        bad_kinds = set(entry.kinds) - {'image', 'video'}
        if bad_kinds:
            raise ValueError(f"scheme {cls.name!r}: zoo entry {entry.suffix!r} has unknown kinds {sorted(bad_kinds)}; "
                             f"expected some of ['image', 'video']")
        if unknown:
            raise ValueError(f"scheme {cls.name!r}: zoo entry {entry.suffix!r} has unknown sizes {sorted(unknown)}; "
                             f"expected some of {list(SIZES)}")
        for size in entry.sizes:
            for kind in entry.kinds:
                models[model_name(size, entry.suffix, kind)] = model_args(size, kind, pos_enc=cls.name,
                                                                          pos_enc_args=dict(entry.options))
    taken = sorted(set(models) & set(ZOO))
    if taken:
        raise ValueError(f"scheme {cls.name!r}: zoo models {taken} are already registered (by scheme "
                         f"{ZOO[taken[0]].get('pos_enc')!r}); give the scheme its own `zoo` entries")
    for name, args in models.items():
        _register(name, args)


def zoo_table() -> Dict[str, Dict[str, Any]]:
    """Every registered model name -> its constructor arguments."""
    return dict(ZOO)


for _size in SIZES:
    for _kind in ('image', 'video'):
        _register(model_name(_size, kind=_kind), model_args(_size, _kind))
on_register(register_scheme_models)
