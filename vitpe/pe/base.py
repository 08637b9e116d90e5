"""The one contract between the trunk and a positional scheme: the runtime grid, the per-forward context,
and the hooks a scheme declares.

A scheme is an ``nn.Module`` that declares the hooks it uses in ``hooks`` (a class attribute; an instance may
narrow it in ``__init__`` when an option turns a hook off) and overrides exactly those. The trunk calls a
hook only when ``scheme.uses(hook)``, so a scheme without a bias never makes attention leave SDPA's fused
kernels, and it never branches on a scheme's name.

Per forward, in the order the trunk calls them (``ctx`` is this forward's :class:`PosContext`, ``layer``
the block index):

``prepare(grid, strategy, device) -> PEState | None``
    once per forward: the scheme's typed per-shape state (angles, coordinates, indices), stored in
    ``ctx.state``. Cache what depends only on the shape with :meth:`PositionalEncoding.cached`.
``tokens(x, ctx) -> x``
    after patch embedding and prefix concat: add to or mix all tokens (ape, sincos, abswin, fourier).
``attn_input(h, ctx, layer) -> h``
    what the attention of ``layer`` sees, given ``h = norm1(x)``; the residual stream is untouched (lape).
``qk(q, k, ctx, layer) -> (q, k)``
    rotate queries and keys, shape (B, heads, N, head_dim) (rope).
``bias(q, k, ctx, layer, rows) -> Tensor``
    an additive attention-logit bias broadcastable to (B, heads, rows, N) (irpe, decomposed); ``q`` holds
    the queries of ``rows`` only (attention works in row chunks when a full bias would be large). Build it
    with ``common.grid_bias``, which pads for prefix tokens and handles the row slice.
    A scheme may also give its bias as a FlexAttention ``score_mod`` (:meth:`PositionalEncoding.score_mod`),
    which attention's 'flex' backend uses instead (``vitpe.layers.attention.set_attention_backend``).
``value(out, v, attn, ctx, layer, rows) -> out``
    adjust the attention output of ``rows`` from V (lepe) or from the attention probabilities ``attn``
    (iRPE on values; ``attn`` is only computed when ``needs_attn_probs`` is true).
``after_block(x, ctx, layer) -> x``
    after block ``layer`` (cpe / PEG).

Randomised positions (Ruoss et al. 2023): a scheme with coordinates takes the option ``random_positions``
(0: off; a factor >= 1) and reads its positions from ``common.GridPositions``, which in training draws each
sample's positions, sorted per axis, from that many times the grid (``self.random_positions`` is set by the
base class; evaluation always uses the grid's own positions).

Window attention (ViTDet): in a window block, ``qk``, ``bias`` and ``value`` get ``ctx.window``, a context whose
grid is the attention window (with the prefix tokens) and whose state is ``prepare(window grid)``: a scheme sees
each window as a grid of its own, so relative schemes use the offsets inside the window with no code of their
own. ``tokens``, ``attn_input`` and ``after_block`` always get the full grid's context (whose ``window`` is the
window context when the model has window blocks, e.g. for a scheme to check its alignment with the windows).

The resolution strategy of the forward (``ctx.strategy``, see ``strategy.py``) is an argument, never module
state. The attention temperature has one path: ``ctx.logit_scale`` (``strategy.attention_logit_scale``, to
which a scheme contributes through :meth:`PositionalEncoding.logit_temperature`).

Tables learned at one grid are brought to another by ``resize_state_dict`` (called from a load_state_dict
pre-hook, so every loader resizes) and ``set_grid_size`` (``set_input_size``).
"""
from __future__ import annotations

import inspect
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Optional, Sequence, Tuple

import torch
from torch import nn

from .common import check_choice, check_positive  # noqa: F401  (old import path)
from .registry import (create_pos_encoding, get_pos_encoding_class, list_pos_encodings,  # noqa: F401  (old path)
                       register_pos_encoding, scheme_options)
from .strategy import (NO_STRATEGY, POSITION_STRATEGIES, TABLE_STRATEGIES, TEMPORAL_STRATEGIES, MovedStrategyAttribute,
                       ResolutionStrategy)

__all__ = ['Grid', 'PEState', 'PosContext', 'PositionalEncoding', 'HOOKS']

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


class PEState:
    """Base of the typed per-forward state a scheme's ``prepare`` returns (each scheme a small dataclass)."""


@dataclass
class PosContext:
    """What the blocks of one forward see: the scheme, the grid, the state from ``prepare``, the resolution
    strategy, the attention-logit multiplier (1.0: as trained; multiplies the usual 1/sqrt(head_dim)) and the
    device of the forward (hooks build index tensors there, not from ``q.device``, a proxy under FX tracing)."""
    pe: 'PositionalEncoding'
    grid: Grid
    state: Optional[PEState] = None
    strategy: ResolutionStrategy = NO_STRATEGY
    logit_scale: float = 1.0
    device: Optional[torch.device] = None  # where per-shape state (ids, indices) is built; None: the scheme's
    # window attention (``vitpe.layers.window``): the forward's context carries ``window``, the context inside
    # one window, which window blocks hand to the hooks (its grid is the window, its state prepared for it);
    # that inner context's ``layout`` says how the full grid is cut into windows
    window: Optional['PosContext'] = None
    layout: Optional[Any] = None


def _tag(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode()), dtype=torch.uint8)


def untag(t: torch.Tensor) -> str:
    """The scheme name stored in a checkpoint's ``pos_enc.scheme`` entry."""
    return bytes(t.to(torch.uint8).tolist()).decode(errors='replace')


_untag = untag  # the old name


class PositionalEncoding(nn.Module):
    """Base class of every scheme. A subclass sets ``name``, declares ``hooks`` and overrides those hooks.

    Declarations (class attributes): ``hooks``; ``needs_attn_probs`` (the value hook reads the attention
    probabilities); ``position_strategies`` (which of 'pi', 'ntk', 'yarn' it understands); ``temporal_strategies``
    (which of 'pi_t', 'ntk_t', 'riflex' it understands on a (T, H, W) grid); ``zoo`` (its
    ``ZooEntry`` model families, default one named after the scheme); ``convert_checkpoint`` (a function
    ``(state_dict, model) -> state_dict`` for checkpoints from outside vitpe, e.g. timm's).

    Constructor arguments shared by all schemes (keyword only): ``dim`` (embedding width), ``num_heads``,
    ``depth``, ``grid_size`` (the reference grid: tables are learned at it), ``num_prefix_tokens`` (cls +
    registers, which never receive a position).
    """
    name: ClassVar[str] = ''
    hooks: FrozenSet[str] = frozenset()
    needs_attn_probs: bool = False
    position_strategies: Tuple[str, ...] = ()
    temporal_strategies: Tuple[str, ...] = ()
    zoo: ClassVar[Optional[tuple]] = None
    convert_checkpoint: ClassVar[Optional[Callable]] = None
    # a persistent uint8 buffer holding ``name``: a checkpoint of another scheme is refused by name
    scheme: torch.Tensor
    random_positions: float = 0.  # the factor of randomised positions in training (0: off); see GridPositions

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
        self.hooks = frozenset(type(self).hooks)
        self.register_buffer('scheme', _tag(self.name), persistent=True)
        self._cache: Dict[Any, Any] = {}
        self._register_load_state_dict_pre_hook(self._load_pre_hook)

    @classmethod
    def check_declarations(cls) -> None:
        """At registration: declared hooks are known and overridden, and every overridden hook is declared."""
        cls._upgrade_legacy_class()
        unknown = set(cls.hooks) - set(HOOKS)
        overridden = cls._overridden_hooks()
        bad_strategies = (set(cls.position_strategies) - set(POSITION_STRATEGIES)) | (
            set(cls.temporal_strategies) - set(TEMPORAL_STRATEGIES))
        if unknown or overridden != set(cls.hooks) or bad_strategies:
            raise TypeError(f"scheme {cls.name!r}: hooks declared {sorted(cls.hooks)} but overridden "
                            f"{sorted(overridden)} (known hooks: {list(HOOKS)}); position strategies must be "
                            f"among {list(POSITION_STRATEGIES)} (temporal: {list(TEMPORAL_STRATEGIES)}), got "
                            f"{sorted(bad_strategies)}")

    @classmethod
    def _overridden_hooks(cls):
        return {h for h in HOOKS if getattr(cls, h) is not getattr(PositionalEncoding, h)}

    @classmethod
    def _upgrade_legacy_class(cls) -> None:
        """Schemes written for 0.1.0 keep working for one release (with a DeprecationWarning): hooks inferred
        from overrides when none are declared, ``strategies`` read as ``position_strategies``, and a
        ``prepare(grid)`` without strategy and device wrapped."""
        own = [k.__dict__ for k in cls.__mro__[:cls.__mro__.index(PositionalEncoding)]]
        old = f"scheme {cls.name!r} follows the 0.1.0 contract; see CHANGELOG.md (0.2.0): "
        if not any('hooks' in d for d in own) and cls._overridden_hooks():
            warnings.warn(old + "declare its hooks in `hooks`", DeprecationWarning, 3)
            cls.hooks = frozenset(cls._overridden_hooks())
        legacy_strategies = next((d['strategies'] for d in own if isinstance(d.get('strategies'), tuple)), None)
        if legacy_strategies is not None:
            warnings.warn(old + "`strategies` is now `position_strategies`", DeprecationWarning, 3)
            cls.position_strategies = tuple(s for s in legacy_strategies if s in POSITION_STRATEGIES)
            cls.strategies = PositionalEncoding.strategies
        prepare = cls.prepare
        if len(inspect.signature(prepare).parameters) == 2:  # (self, grid)
            warnings.warn(old + "`prepare` takes (grid, strategy, device)", DeprecationWarning, 3)
            cls.prepare = lambda self, grid, strategy=NO_STRATEGY, device=None: prepare(self, grid)

    @classmethod
    def upgrade_options(cls, options: Dict[str, Any]) -> None:
        """Rename deprecated options in place (override where a scheme renamed one)."""

    @property
    def rank(self) -> int:
        return len(self.grid_size)

    def uses(self, hook: str) -> bool:
        return hook in self.hooks

    @property
    def draws_positions(self) -> bool:
        """Whether a forward now draws randomised positions (training, with ``random_positions``)."""
        return self.training and self.random_positions > 0

    def default_device(self) -> torch.device:
        """Where this module's tensors live: state is built there when ``prepare`` or a lookup is called without
        a device (the trunk always passes the input's)."""
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def cached(self, key, fn: Callable[[], Any]):
        """Memoise shape-only state (no parameters inside) by ``key``; cleared on device/dtype moves. Under
        torch.compile / torch.export the state is computed in the graph instead (a key of symbolic sizes
        would specialise them)."""
        if torch.compiler.is_compiling():
            return fn()
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

    # ----------------------------------------------------------------- resolution strategies
    @property
    def interpolates_tables(self) -> bool:
        """Whether the scheme resamples learned tables (so the table-interpolation strategies apply)."""
        from .common import LearnedTable
        return any(isinstance(m, LearnedTable) for m in self.modules())

    def applicable_strategies(self):
        """The single strategies that change something for this scheme (besides 'none')."""
        temporal = list(self.temporal_strategies) if self.rank == 3 else []
        return (list(self.position_strategies) + temporal + ['logit'] +
                (list(TABLE_STRATEGIES) if self.interpolates_tables else []))

    def check_strategy(self, strategy: ResolutionStrategy) -> None:
        bad = [p for p in strategy.parts if p not in self.applicable_strategies()]
        if bad:
            raise ValueError(f"strategy {bad[0]!r} does not apply to scheme '{self.name}'; it takes "
                             f"{['none'] + self.applicable_strategies()}")

    @property
    def strategies(self) -> Tuple[str, ...]:
        """Deprecated name of ``position_strategies``."""
        warnings.warn("PositionalEncoding.strategies is renamed position_strategies", DeprecationWarning, 2)
        return self.position_strategies

    resolution_strategy = MovedStrategyAttribute(lambda strategy: strategy.positions)

    def logit_temperature(self, grid: Grid, strategy: ResolutionStrategy) -> float:
        """The scheme's own factor on the attention logits under ``strategy`` (YaRN's temperature); 1.0."""
        return 1.0

    def set_attention_window(self, window: Tuple[int, ...]) -> None:
        """Called once by a trunk built with window attention of shape ``window`` (see ``PosContext.window``): a
        scheme with a table tied to the attention window adapts it here (abswin). Default: nothing."""

    # ----------------------------------------------------------------- hooks (declare and override)
    def init_weights(self) -> None:
        """Initialise parameters as the scheme's reference does (called by the trunk's ``init_weights``)."""

    def prepare(self, grid: Grid, strategy: ResolutionStrategy = NO_STRATEGY,
                device: Optional[torch.device] = None) -> Optional[PEState]:
        return None

    def tokens(self, x: torch.Tensor, ctx: PosContext) -> torch.Tensor:
        return x

    def attn_input(self, h: torch.Tensor, ctx: PosContext, layer: int) -> torch.Tensor:
        return h

    def qk(self, q: torch.Tensor, k: torch.Tensor, ctx: PosContext, layer: int):
        return q, k

    def bias(self, q: torch.Tensor, k: torch.Tensor, ctx: PosContext, layer: int,
             rows: slice = slice(None)) -> torch.Tensor:
        raise NotImplementedError

    def score_mod(self, ctx: PosContext, layer: int, bias_scale: float = 1.0,
                  dtype: torch.dtype = torch.float32) -> Optional[Callable]:
        """The ``bias`` of ``layer`` (times ``bias_scale``, rounded to ``dtype`` as the bias path's is) as a
        FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``, for attention's 'flex' backend; None (the
        default) keeps this forward on SDPA with ``bias``."""
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

    def inflate_state_dict(self, state_dict: Dict[str, torch.Tensor], prefix: str, mode: str = 'central') -> None:
        """Make this scheme's entries of a 2D checkpoint (keys under ``prefix``) those of this scheme on a (T, H, W)
        grid, in place (an image checkpoint loaded into a video model, ``vitpe.models.inflate``). The default: a
        learned table over the whole grid gets a time axis (the 2D table on each reference frame), a 3D
        convolution kernel gets one as the patch kernel does (``common.inflate_kernel``, by ``mode``). Schemes
        with other parameters extend it."""
        from .common import LearnedTable, inflate_kernel
        for name, mod in self.named_modules():
            key = prefix + (name + '.' if name else '') + 'weight'
            w = state_dict.get(key)
            if isinstance(mod, LearnedTable) and mod.axes is None and w is not None and w.ndim == 4:
                state_dict[key] = w.unsqueeze(1).repeat(1, self.grid_size[0], 1, 1, 1)
            elif isinstance(mod, nn.Conv3d) and w is not None and w.ndim == 4:
                state_dict[key] = inflate_kernel(w, mod.kernel_size[0], mode)

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
            theirs = untag(tag)
            if theirs != self.name:
                raise ValueError(
                    f"checkpoint was trained with positional scheme '{theirs}' but this model uses '{self.name}': "
                    f"load it into a '{theirs}' model, or convert it explicitly")
        else:
            state_dict[prefix + 'scheme'] = self.scheme.clone()
        self.resize_state_dict(state_dict, prefix)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, dim={self.dim}, heads={self.num_heads}"
