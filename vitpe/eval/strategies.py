"""Training-free resolution strategies, selectable per evaluation (ideas from length extrapolation in
language models; no vision zoo offers them as switches):

- ``none``: as trained;
- ``pi``: position interpolation, coordinates scaled by reference / test grid (RoPE, sin-cos, Fourier);
- ``ntk``: NTK-aware base scaling of RoPE frequencies;
- ``yarn``: YaRN per-frequency ramp plus its attention temperature (RoPE);
- ``logit``: attention logits scaled by log(N_test) / log(N_train) (any scheme);
- ``bicubic`` / ``bilinear`` / ``nearest``: how learned tables are resampled (ape, lape, abswin, RoPE + APE).
"""
from __future__ import annotations

import contextlib
from typing import List

from torch import nn

from ..pe.absolute import AbsWinPE, LearnedTable

STRATEGIES = ('none', 'pi', 'ntk', 'yarn', 'logit', 'bicubic', 'bilinear', 'nearest')
TABLE_STRATEGIES = ('bicubic', 'bilinear', 'nearest')


def _tables(model: nn.Module) -> List[nn.Module]:
    pe = model.pos_enc
    return [m for m in pe.modules() if isinstance(m, (LearnedTable, AbsWinPE))]


def applicable_strategies(model: nn.Module) -> List[str]:
    """The strategies that change something for this model's scheme."""
    pe = getattr(model, 'pos_enc', None)
    if pe is None:
        return ['none']
    out = ['none'] + list(pe.strategies) + ['logit']
    if _tables(model):
        out += list(TABLE_STRATEGIES)
    return out


@contextlib.contextmanager
def apply_strategy(model: nn.Module, strategy: str):
    """Within the block, ``model`` evaluates with ``strategy``; everything is restored afterwards."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown resolution strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    allowed = applicable_strategies(model)
    if strategy not in allowed:
        scheme = getattr(getattr(model, 'pos_enc', None), 'name', type(model).__name__)
        raise ValueError(f"strategy {strategy!r} does not apply to scheme '{scheme}'; it takes {allowed}")
    pe = model.pos_enc
    saved = (pe.resolution_strategy, model.attn_logit_scaling, [t.interpolation for t in _tables(model)])
    try:
        if strategy in pe.strategies:
            pe.resolution_strategy = strategy
        model.attn_logit_scaling = strategy == 'logit'
        if strategy in TABLE_STRATEGIES:
            for t in _tables(model):
                t.interpolation = strategy
        yield model
    finally:
        pe.resolution_strategy = saved[0]
        model.attn_logit_scaling = saved[1]
        for t, interp in zip(_tables(model), saved[2]):
            t.interpolation = interp
