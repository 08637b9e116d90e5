"""Positional schemes behind one interface (see ``base.PositionalEncoding``)."""
from .base import (Grid, PosContext, PositionalEncoding, create_pos_encoding, get_pos_encoding_class,
                   list_pos_encodings, register_pos_encoding, scheme_options)
from .absolute import AbsolutePE, AbsWinPE, FourierPE, LearnedTable, NoPE, SinCosPE
from .rope import RoPEAxial, RoPEMixed
from .irpe import IRPE
from .conv import ConditionalPE, LocallyEnhancedPE
from .lape import LayerAdaptivePE
from .relative import DecomposedRelPos
