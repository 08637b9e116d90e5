"""Positional schemes behind one contract (``base.PositionalEncoding``), one file per scheme, named after it.

Importing this package imports every module here except the shared ones below, and each scheme module
registers its scheme (``registry``): a new scheme is a new file, with no list to edit. Schemes are
registered in the order of their file names."""
import importlib
import pkgutil

from .base import HOOKS, Grid, PEState, PosContext, PositionalEncoding
from .registry import (ZooEntry, create_pos_encoding, get_pos_encoding_class, list_pos_encodings, on_register,
                       register_pos_encoding, scheme_options)
from .strategy import STRATEGIES, ResolutionStrategy, current_strategy, use_strategy
from .common import LearnedTable, check_choice, check_positive, grid_bias

# modules of shared pieces, and the deprecated aliases of 0.1.0's modules (importing those warns)
SHARED_MODULES = {'base', 'registry', 'strategy', 'common', 'converters', 'rotary', 'offset_bias'}
DEPRECATED_MODULES = {'absolute', 'relative', 'conv', 'rope', 'functional'}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in SHARED_MODULES | DEPRECATED_MODULES and not _info.name.startswith('_'):
        importlib.import_module(f'{__name__}.{_info.name}')

from .none import NoPE  # noqa: E402  (the built-in classes under their 0.1.0 import path)
from .ape import AbsolutePE  # noqa: E402
from .sincos import SinCosPE  # noqa: E402
from .rope_axial import RoPEAxial  # noqa: E402
from .rope_mixed import RoPEMixed  # noqa: E402
from .irpe import IRPE  # noqa: E402
from .cpe import ConditionalPE  # noqa: E402
from .lepe import LocallyEnhancedPE  # noqa: E402
from .lape import LayerAdaptivePE  # noqa: E402
from .abswin import AbsWinPE  # noqa: E402
from .fourier import FourierPE  # noqa: E402
from .decomposed import DecomposedRelPos  # noqa: E402
