"""Positional schemes behind one contract (``base.PositionalEncoding``), one file per scheme, named after it.
Importing this package registers every built-in scheme (``registry``)."""
from .base import HOOKS, Grid, PEState, PosContext, PositionalEncoding
from .registry import (ZooEntry, create_pos_encoding, get_pos_encoding_class, list_pos_encodings, on_register,
                       register_pos_encoding, scheme_options)
from .strategy import STRATEGIES, ResolutionStrategy, current_strategy, use_strategy
from .common import LearnedTable, check_choice, check_positive, grid_bias
# the built-in schemes, in the order of the zoo and the study
from .none import NoPE
from .ape import AbsolutePE
from .sincos import SinCosPE
from .rope_axial import RoPEAxial
from .rope_mixed import RoPEMixed
from .irpe import IRPE
from .cpe import ConditionalPE
from .lepe import LocallyEnhancedPE
from .lape import LayerAdaptivePE
from .abswin import AbsWinPE
from .fourier import FourierPE
from .decomposed import DecomposedRelPos
