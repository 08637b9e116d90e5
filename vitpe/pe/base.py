"""The one interface every positional scheme implements, the runtime grid, and the scheme registry.

A scheme is an ``nn.Module`` that overrides only the hooks it needs. The trunk asks
``scheme.uses(hook)`` and calls nothing else, so a scheme without a bias never makes
attention leave SDPA's fused kernels.

Hooks, in the order the trunk calls them (``ctx`` is the :class:`PosContext` of this forward,
``layer`` the block index):

``prepare(grid) -> dict``
    once per forward; per-shape state (angles, bucket ids, resampled tables). Cache what
    depends only on the shape with :meth:`PositionalEncoding.cached`. An entry 'logit_scale'
    multiplies the attention logits of this forward (YaRN's temperature).
``tokens(x, ctx) -> x``
    after patch embedding and prefix concat: add to or mix all tokens (ape, sincos, abswin, fourier).
``attn_input(h, ctx, layer) -> h``
    what the attention of ``layer`` sees, given ``h = norm1(x)``; the residual stream is untouched (lape).
``qk(q, k, ctx, layer) -> (q, k)``
    rotate queries and keys, shape (B, heads, N, head_dim) (rope).
``bias(q, k, ctx, layer, rows) -> Tensor | None``
    an additive attention-logit bias broadcastable to (B, heads, rows, N) (irpe, decomposed); ``q``
    holds the queries of ``rows`` only (a slice of the sequence: attention works in row chunks when
    a full (B, heads, N, N) bias would be large, so a bias is never materialised for every row at once).
``value(out, v, attn, ctx, layer, rows) -> out``
    adjust the attention output of ``rows`` from V (lepe) or from the attention probabilities ``attn``
    (iRPE on values; ``attn`` is only computed when ``needs_attn_probs`` is true).
``after_block(x, ctx, layer) -> x``
    after block ``layer`` (cpe / PEG).

Tables learned at one grid are brought to another by ``resize_state_dict`` (called from a
load_state_dict pre-hook, so every loader resizes) and ``set_grid_size`` (``set_input_size``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple, Type

import torch
from torch import nn

__all__ = [
    'Grid', 'PosContext', 'PositionalEncoding', 'register_pos_encoding', 'create_pos_encoding',
    'list_pos_encodings', 'get_pos_encoding_class', 'check_choice', 'check_positive',
]

HOOKS = ('tokens', 'attn_input', 'qk', 'bias', 'value', 'after_block')


@dataclass(frozen=True)
class Grid:
    """The token grid of one forward: spatial shape ((T,) H, W) and the number of prefix tokens."""
    shape: Tuple[int, ...]
    num_prefix: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def num_patches(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches


@dataclass
class PosContext:
    """What the blocks of one forward see: the scheme, the grid and the state from ``prepare``.

    ``logit_scale`` multiplies the usual 1/sqrt(head_dim) attention scale (a training-free
    resolution strategy); 1.0 means as trained.
    """
    pe: 'PositionalEncoding'
    grid: Grid
    state: Dict[str, Any] = field(default_factory=dict)
    logit_scale: float = 1.0


def check_choice(scheme: str, option: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{scheme}: invalid {option}={value!r}; expected one of {list(choices)}")


def check_positive(scheme: str, option: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{scheme}: invalid {option}={value!r}; expected a positive number")


def _tag(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode()), dtype=torch.uint8)


def _untag(t: torch.Tensor) -> str:
    return bytes(t.to(torch.uint8).tolist()).decode(errors='replace')


class PositionalEncoding(nn.Module):
    """Base class of every scheme. Subclasses set ``name`` and override the hooks they need.

    Constructor arguments shared by all schemes (keyword only): ``dim`` (embedding width),
    ``num_heads``, ``depth``, ``grid_size`` (the reference grid: tables are learned at it),
    ``num_prefix_tokens`` (cls + registers, which never receive a position).
    """
    name: ClassVar[str] = ''
    needs_attn_probs: bool = False
    # training-free strategies at another resolution this scheme understands (besides 'none')
    strategies: ClassVar[Tuple[str, ...]] = ()
    resolution_strategy: str = 'none'
    # a persistent uint8 buffer holding ``name``: a checkpoint of another scheme is refused by name
    scheme: torch.Tensor

    def __init__(self, *, dim: int, num_heads: int, depth: int, grid_size: Sequence[int],
                 num_prefix_tokens: int = 0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{self.name}: dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.depth = depth
        self.grid_size = tuple(int(s) for s in grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.register_buffer('scheme', _tag(self.name), persistent=True)
        self._cache: Dict[Any, Any] = {}
        self._hooks_used = frozenset(h for h in HOOKS if getattr(type(self), h) is not getattr(PositionalEncoding, h))
        self._register_load_state_dict_pre_hook(self._load_pre_hook)

    @property
    def rank(self) -> int:
        return len(self.grid_size)

    def uses(self, hook: str) -> bool:
        return hook in self._hooks_used

    def cached(self, key, fn: Callable[[], Any]):
        """Memoise shape-only state (no parameters inside) by ``key``; cleared on device/dtype moves."""
        val = self._cache.get(key)
        if val is None:
            if len(self._cache) >= 64:  # many grids or table versions seen: start over rather than grow
                self._cache.clear()
            val = self._cache[key] = fn()
        return val

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def check_grid(self, grid: Grid) -> None:
        if grid.rank != self.rank:
            raise ValueError(
                f"{self.name}: got a grid of rank {grid.rank} {tuple(grid.shape)}, this scheme was built for "
                f"rank {self.rank} (grid {self.grid_size})")

    # ----------------------------------------------------------------- hooks (override what you need)
    def prepare(self, grid: Grid) -> Dict[str, Any]:
        return {}

    def tokens(self, x: torch.Tensor, ctx: PosContext) -> torch.Tensor:
        return x

    def attn_input(self, h: torch.Tensor, ctx: PosContext, layer: int) -> torch.Tensor:
        return h

    def qk(self, q: torch.Tensor, k: torch.Tensor, ctx: PosContext, layer: int):
        return q, k

    def bias(self, q: torch.Tensor, k: torch.Tensor, ctx: PosContext, layer: int,
             rows: slice = slice(None)) -> Optional[torch.Tensor]:
        return None

    def value(self, out: torch.Tensor, v: torch.Tensor, attn: Optional[torch.Tensor], ctx: PosContext,
              layer: int, rows: slice = slice(None)) -> torch.Tensor:
        return out

    def after_block(self, x: torch.Tensor, ctx: PosContext, layer: int) -> torch.Tensor:
        return x

    # ----------------------------------------------------------------- tables and checkpoints
    def resize_state_dict(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> None:
        """Bring this scheme's tables in ``state_dict`` (keys start with ``prefix``) to ``self.grid_size``.
        The default resizes every learned table (a submodule with ``resize_state_dict``) it holds."""
        for name, mod in self.named_modules():
            if mod is not self and hasattr(mod, 'resize_state_dict'):
                mod.resize_state_dict(state_dict, prefix + (name + '.' if name else ''), self.grid_size)

    def set_grid_size(self, grid_size: Sequence[int]) -> None:
        """Make ``grid_size`` the reference grid, resampling learned tables in place."""
        grid_size = tuple(int(s) for s in grid_size)
        if len(grid_size) != self.rank:
            raise ValueError(f"{self.name}: grid_size {grid_size} has rank {len(grid_size)}, expected {self.rank}")
        sd = {k: v for k, v in self.state_dict().items()}
        self.grid_size = grid_size
        self._cache = {}
        self.resize_state_dict(sd, '')
        for name, p in list(self.named_parameters()):
            if name in sd and sd[name].shape != p.shape:
                mod_name, _, attr = name.rpartition('.')
                mod = self.get_submodule(mod_name) if mod_name else self
                setattr(mod, attr, nn.Parameter(sd[name].to(p.dtype), requires_grad=p.requires_grad))

    def _load_pre_hook(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        tag = state_dict.get(prefix + 'scheme')
        if tag is not None:
            theirs = _untag(tag)
            if theirs != self.name:
                raise ValueError(
                    f"checkpoint was trained with positional scheme '{theirs}' but this model uses '{self.name}': "
                    f"load it into a '{theirs}' model, or convert it explicitly")
        else:
            state_dict[prefix + 'scheme'] = self.scheme.clone()
        self.resize_state_dict(state_dict, prefix)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, dim={self.dim}, heads={self.num_heads}"


_REGISTRY: Dict[str, Type[PositionalEncoding]] = {}


def register_pos_encoding(cls: Type[PositionalEncoding]) -> Type[PositionalEncoding]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"scheme name {cls.name!r} is empty or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_pos_encodings():
    """Names of every registered positional scheme."""
    return list(_REGISTRY)


def get_pos_encoding_class(name: str) -> Type[PositionalEncoding]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown positional scheme {name!r}; expected one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def scheme_options(name: str) -> Dict[str, Any]:
    """The documented options of a scheme and their defaults."""
    sig = inspect.signature(get_pos_encoding_class(name).__init__)
    common = {'self', 'dim', 'num_heads', 'depth', 'grid_size', 'num_prefix_tokens'}
    return {k: p.default for k, p in sig.parameters.items() if k not in common and p.kind == p.KEYWORD_ONLY}


def create_pos_encoding(name: str, *, dim: int, num_heads: int, depth: int, grid_size: Sequence[int],
                        num_prefix_tokens: int = 0, **options) -> PositionalEncoding:
    cls = get_pos_encoding_class(name)
    allowed = scheme_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; expected some of {sorted(allowed)}")
    return cls(dim=dim, num_heads=num_heads, depth=depth, grid_size=grid_size,
               num_prefix_tokens=num_prefix_tokens, **options)
