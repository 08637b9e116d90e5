"""Training-free resolution strategies as a value that travels with each forward (never a module attribute).

A strategy is parsed from a name such as ``'pi'`` or a combination such as ``'pi+logit'``:

- positions (at most one): ``pi`` (coordinates scaled by reference / test grid, Chen et al. 2023),
  ``ntk`` (NTK-aware RoPE base scaling), ``yarn`` (YaRN's per-frequency ramp and temperature, Peng et al. 2023);
- along time only (video, at most one; the position strategy then acts on the spatial axes only): ``pi_t``
  (the t coordinate scaled by reference / test frames), ``ntk_t`` (NTK-aware scaling of the temporal
  frequencies), ``riflex`` (RIFLEx, Zhao et al. 2025: the intrinsic temporal frequency lowered so that the test
  clip stays within 90% of one period; see ``rotary.py``);
- ``logit``: attention logits scaled by log(N_test) / log(N_train) (any scheme);
- below the reference: ``pi`` and ``pi_t`` scale coordinates at any test size (a smaller grid or a shorter clip
  is stretched to the reference span), ``ntk``, ``yarn``, ``ntk_t`` and ``riflex`` act only where the test grid
  (clip) is larger (longer) than the reference and leave a smaller one as trained;
- table interpolation (at most one): ``bicubic``, ``bilinear``, ``nearest`` (how learned tables are resampled).

The trunk takes the strategy as ``model(x, strategy='pi+logit')``; without one it uses the strategy of the
current context (:func:`use_strategy`, a ``contextvars`` value: per thread and per task), by default none.
So one model can be evaluated under several strategies at once, and nothing is ever restored.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple, Union

POSITION_STRATEGIES = ('pi', 'ntk', 'yarn')
TEMPORAL_STRATEGIES = ('pi_t', 'ntk_t', 'riflex')
TABLE_STRATEGIES = ('bicubic', 'bilinear', 'nearest')
STRATEGIES = ('none',) + POSITION_STRATEGIES + TEMPORAL_STRATEGIES + ('logit',) + TABLE_STRATEGIES


@dataclass(frozen=True)
class ResolutionStrategy:
    """``positions``: 'none', 'pi', 'ntk' or 'yarn'; ``logit``: log-length logit scaling on or off;
    ``interpolation``: how learned tables are resampled (None: each table's own setting); ``temporal``: 'none',
    'pi_t', 'ntk_t' or 'riflex' (video: the time axis; ``positions`` then acts on the spatial axes only)."""
    positions: str = 'none'
    logit: bool = False
    interpolation: Optional[str] = None
    temporal: str = 'none'

    @classmethod
    def parse(cls, spec: Union[str, 'ResolutionStrategy', None]) -> 'ResolutionStrategy':
        if spec is None:
            return NO_STRATEGY
        if isinstance(spec, ResolutionStrategy):
            return spec
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"invalid resolution strategy {spec!r}; expected a name such as 'pi' or 'pi+logit'")
        parts = spec.split('+')
        unknown = [p for p in parts if p not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown resolution strategy {unknown[0]!r} in {spec!r}; expected one of "
                             f"{list(STRATEGIES)} or a combination joined by '+'")
        positions = [p for p in parts if p in POSITION_STRATEGIES]
        tables = [p for p in parts if p in TABLE_STRATEGIES]
        temporal = [p for p in parts if p in TEMPORAL_STRATEGIES]
        repeated = len(parts) != len(set(parts)) or ('none' in parts and len(parts) > 1)
        if len(positions) > 1 or len(tables) > 1 or len(temporal) > 1 or repeated:
            raise ValueError(f"resolution strategy {spec!r} combines what cannot be combined: at most one of "
                             f"{list(POSITION_STRATEGIES)}, at most one of {list(TEMPORAL_STRATEGIES)}, at most one "
                             f"of {list(TABLE_STRATEGIES)}, and 'logit'")
        return cls(positions[0] if positions else 'none', 'logit' in parts, tables[0] if tables else None,
                   temporal[0] if temporal else 'none')

    @property
    def parts(self) -> Tuple[str, ...]:
        """The single strategies this one combines, e.g. ('pi', 'logit'); () for none."""
        out = () if self.positions == 'none' else (self.positions,)
        out += () if self.temporal == 'none' else (self.temporal,)
        out += ('logit',) if self.logit else ()
        return out + ((self.interpolation,) if self.interpolation else ())

    @property
    def name(self) -> str:
        return '+'.join(self.parts) or 'none'

    def __str__(self) -> str:
        return self.name


NO_STRATEGY = ResolutionStrategy()
_CURRENT: contextvars.ContextVar[ResolutionStrategy] = contextvars.ContextVar('vitpe_strategy', default=NO_STRATEGY)


def current_strategy() -> ResolutionStrategy:
    """The strategy of this thread / task (set by :func:`use_strategy`), by default none."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_strategy(spec: Union[str, ResolutionStrategy, None]) -> Iterator[ResolutionStrategy]:
    """Within the block, vitpe models called without ``strategy=`` in this thread / task use ``spec``."""
    token = _CURRENT.set(ResolutionStrategy.parse(spec))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def position_scale(reference: Tuple[int, ...], shape: Tuple[int, ...],
                   strategy: ResolutionStrategy) -> Optional[Tuple[float, ...]]:
    """Per-axis coordinate scale of position interpolation (reference / test grid), or None (as trained). With a
    temporal strategy on a (T, H, W) grid, 'pi' scales h and w only and 'pi_t' scales t only."""
    temporal = strategy.temporal != 'none' and len(shape) == 3
    if strategy.positions != 'pi' and not (temporal and strategy.temporal == 'pi_t'):
        return None
    scale = [r / s if strategy.positions == 'pi' else 1.0 for r, s in zip(reference, shape)]
    if temporal:
        scale[0] = reference[0] / shape[0] if strategy.temporal == 'pi_t' else 1.0
    return tuple(scale)


def attention_logit_scale(pe, grid, strategy: ResolutionStrategy) -> float:
    """The one multiplier of the attention logits for this forward (1.0: as trained): the 'logit' strategy's
    log(N_test) / log(N_train) times the scheme's own temperature (YaRN's, ``pe.logit_temperature``)."""
    scale = pe.logit_temperature(grid, strategy)
    if strategy.logit:
        n_train = math.prod(pe.grid_size)
        if n_train > 1:
            scale *= math.log(grid.num_patches) / math.log(n_train)
    return scale


MOVED = ("the resolution strategy is no longer a module attribute: pass it to the forward "
         "(model(x, strategy='pi+logit')) or use vitpe.use_strategy / vitpe.eval.apply_strategy")


class MovedStrategyAttribute:
    """A 0.1.0 attribute that held part of the strategy (``pe.resolution_strategy``, ``model.attn_logit_scaling``):
    reading it gives the current context's value with a DeprecationWarning; setting it raises, since it would
    no longer change anything."""

    def __init__(self, read: Callable[[ResolutionStrategy], object]):
        self.read = read

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        warnings.warn(f"{self.name} is deprecated: {MOVED}", DeprecationWarning, stacklevel=2)
        return self.read(current_strategy())

    def __set__(self, obj, value):
        raise AttributeError(f"{self.name} cannot be set: {MOVED}")
