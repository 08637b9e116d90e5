"""The scheme registry: the only list of schemes. Zoo entries (``vitpe.models.zoo``), the catalogue, the
tests' scheme lists and the study's scheme set are all derived from it, so adding a scheme is one file
with ``@register_pos_encoding`` on its class, nothing else."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple, Type

__all__ = ['ZooEntry', 'register_pos_encoding', 'list_pos_encodings', 'get_pos_encoding_class', 'scheme_options',
           'create_pos_encoding', 'on_register', 'DEFAULT_ZOO_SIZES', 'ZOO_KINDS']

DEFAULT_ZOO_SIZES = ('micro', 'tiny', 'small', 'base')
ZOO_KINDS = ('image', 'video')
COMMON_ARGS = ('dim', 'num_heads', 'depth', 'grid_size', 'num_prefix_tokens')


@dataclass(frozen=True)
class ZooEntry:
    """A model family a scheme contributes to the timm zoo: ``vitpe_<size>_patch16_<suffix>_<img>`` (kind
    'image') and ``vitpe_<size>_patch16_<suffix>_video_<frames>x<img>`` (kind 'video') for every size in
    ``sizes`` and kind in ``kinds``, built with the scheme's ``options``."""
    suffix: str
    options: Dict[str, Any] = field(default_factory=dict)
    sizes: Tuple[str, ...] = DEFAULT_ZOO_SIZES
    kinds: Tuple[str, ...] = ZOO_KINDS


_REGISTRY: Dict[str, type] = {}
_LISTENERS: List[Callable[[type], None]] = []


def on_register(listener: Callable[[type], None]) -> None:
    """Call ``listener(cls)`` for every scheme registered so far and every one registered later (the zoo)."""
    _LISTENERS.append(listener)
    for cls in list(_REGISTRY.values()):
        listener(cls)


def register_pos_encoding(cls: type) -> type:
    """Class decorator: check the scheme's declarations and add it (and its zoo entries) to the registry."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"scheme name {cls.name!r} is empty or registered twice")
    cls.check_declarations()
    if 'zoo' not in cls.__dict__:  # a subclass of a registered scheme names its own models, not its parent's
        cls.zoo = (ZooEntry(cls.name),)
    for listener in _LISTENERS:  # the zoo: refuses model names already taken, before the scheme is added
        listener(cls)
    _REGISTRY[cls.name] = cls
    return cls


def list_pos_encodings() -> List[str]:
    """Names of every registered positional scheme."""
    return list(_REGISTRY)


def get_pos_encoding_class(name: str) -> type:
    if name not in _REGISTRY:
        raise ValueError(f"unknown positional scheme {name!r}; expected one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def scheme_options(name: str) -> Dict[str, Any]:
    """The documented options of a scheme and their defaults (its keyword-only constructor arguments)."""
    sig = inspect.signature(get_pos_encoding_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if k not in COMMON_ARGS and k != 'self' and p.kind == p.KEYWORD_ONLY}


def create_pos_encoding(name: str, *, dim: int, num_heads: int, depth: int, grid_size: Sequence[int],
                        num_prefix_tokens: int = 0, **options):
    """Build scheme ``name``; an option it does not have raises ``ValueError`` naming it."""
    cls = get_pos_encoding_class(name)
    cls.upgrade_options(options)
    allowed = scheme_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; expected some of {sorted(allowed)}")
    pe = cls(dim=dim, num_heads=num_heads, depth=depth, grid_size=grid_size, num_prefix_tokens=num_prefix_tokens,
             **options)
    extra = set(pe.hooks) - set(cls.hooks)
    if extra:
        raise TypeError(f"{name}: an instance may narrow its class's hooks, not add {sorted(extra)}")
    return pe
