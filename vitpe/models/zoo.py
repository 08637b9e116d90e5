"""The vitpe zoo in timm: every (size, scheme) entry is generated from the tables below and registered
with ``timm.models.register_model``, so ``timm.create_model('vitpe_small_patch16_rope_mixed_224')``
works after ``import vitpe``. All entries share one trunk recipe (DeiT: class token, token pooling,
qkv bias, no LayerScale); only the scheme changes."""
from __future__ import annotations

from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .convert import checkpoint_filter_fn
from .vision_transformer import VisionTransformer

SIZES: Dict[str, Dict[str, Any]] = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=3),
    'small': dict(embed_dim=384, depth=12, num_heads=6),
    'base': dict(embed_dim=768, depth=12, num_heads=12),
}
TRUNK = dict(patch_size=16, img_size=224, mlp_ratio=4., qkv_bias=True, class_token=True, global_pool='token')

# model-name suffix -> (scheme, scheme options, sizes)
ZOO_SCHEMES: Dict[str, tuple] = {name: (name, {}, ('tiny', 'small', 'base')) for name in [
    'none', 'ape', 'sincos', 'rope_axial', 'rope_mixed', 'irpe', 'cpe', 'lepe', 'lape', 'abswin', 'fourier',
    'decomposed']}
ZOO_SCHEMES.update({
    'rope_axial_ape': ('rope_axial', dict(ape=True), ('small', 'base')),
    'rope_mixed_ape': ('rope_mixed', dict(ape=True), ('small', 'base')),
})


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.9,
        'interpolation': 'bicubic', 'fixed_input_size': False, 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        **kwargs,
    }


def _create(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        VisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


def zoo_table() -> Dict[str, Dict[str, Any]]:
    """Every registered model name -> its constructor arguments (the scheme entries and the generic ones)."""
    table = {}
    for size, dims in SIZES.items():
        table[f'vitpe_{size}_patch16_224'] = dict(TRUNK, **dims)
        for suffix, (scheme, options, sizes) in ZOO_SCHEMES.items():
            if size in sizes:
                table[f'vitpe_{size}_patch16_{suffix}_224'] = dict(TRUNK, **dims, pos_enc=scheme,
                                                                   pos_enc_args=dict(options))
    return table


def _make_entry(name: str, model_args: Dict[str, Any]):
    fixed_scheme = model_args.get('pos_enc')

    def entry(pretrained: bool = False, **kwargs) -> VisionTransformer:
        args = dict(model_args)
        if fixed_scheme is not None and kwargs.get('pos_enc', fixed_scheme) != fixed_scheme:
            raise ValueError(f"{name} is the '{fixed_scheme}' model; pos_enc={kwargs['pos_enc']!r} is not allowed "
                             f"here (use vitpe_<size>_patch16_224 with pos_enc=...)")
        kwargs.pop('pos_enc', None) if fixed_scheme is not None else None
        user_pe_args = kwargs.pop('pos_enc_args', None) or {}
        args['pos_enc_args'] = dict(args.get('pos_enc_args') or {}, **user_pe_args)
        return _create(name, pretrained, **dict(args, **kwargs))

    scheme = fixed_scheme or "chosen with pos_enc= (default 'ape')"
    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"vitpe ViT ({model_args['embed_dim']} wide, {model_args['depth']} deep), positional scheme: {scheme}."
    return entry


ZOO = zoo_table()
default_cfgs = generate_default_cfgs({
    name: _cfg(description=f"positional scheme: {args.get('pos_enc', 'ape (pos_enc=)')}") for name, args in ZOO.items()})

for _name, _args in ZOO.items():
    globals()[_name] = register_model(_make_entry(_name, _args))
