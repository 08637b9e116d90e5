"""Training-free resolution strategies at evaluation (ideas from length extrapolation in language models):

- ``none``: as trained;
- ``pi``: position interpolation, coordinates scaled by reference / test grid (RoPE, sin-cos, Fourier);
- ``ntk``: NTK-aware base scaling of RoPE frequencies;
- ``yarn``: YaRN per-frequency ramp plus its attention temperature (RoPE);
- ``pi_t`` / ``ntk_t`` / ``riflex``: along time only, for video (RoPE; ``pi_t`` also sin-cos), combinable with
  one of the above, which then acts on the spatial axes;
- ``logit``: attention logits scaled by log(N_test) / log(N_train) (any scheme);
- ``bicubic`` / ``bilinear`` / ``nearest``: how learned tables are resampled (ape, lape, abswin, RoPE + APE);
- combinations joined by ``+``, e.g. ``pi+logit`` (``vitpe.pe.strategy.ResolutionStrategy``).

A strategy is an argument of the forward (``model(x, strategy='pi+logit')``) or of the current context
(:func:`apply_strategy`); it never changes the model, so nothing needs restoring.
"""
from __future__ import annotations

import contextlib
from typing import List

from torch import nn

from ..pe.strategy import STRATEGIES, TABLE_STRATEGIES, ResolutionStrategy, use_strategy  # noqa: F401


def applicable_strategies(model: nn.Module) -> List[str]:
    """The single strategies that change something for this model's scheme."""
    pe = getattr(model, 'pos_enc', None)
    if pe is None:
        return ['none']
    return ['none'] + pe.applicable_strategies()


def check_strategy(model: nn.Module, strategy) -> ResolutionStrategy:
    """Parse ``strategy`` and check it applies to ``model``'s scheme (ValueError naming both otherwise)."""
    strategy = ResolutionStrategy.parse(strategy)
    pe = getattr(model, 'pos_enc', None)
    if pe is None and strategy.parts:
        raise ValueError(f"strategy {strategy.name!r} needs a vitpe model; {type(model).__name__} has no scheme")
    if pe is not None:
        pe.check_strategy(strategy)
    return strategy


@contextlib.contextmanager
def apply_strategy(model: nn.Module, strategy):
    """Within the block, vitpe models called in this thread / task without ``strategy=`` evaluate with
    ``strategy`` (checked against ``model``'s scheme). The model itself is not changed."""
    with use_strategy(check_strategy(model, strategy)):
        yield model
