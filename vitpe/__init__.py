"""vitpe: one Vision Transformer trunk with swappable positional encodings, registered with timm.

``import vitpe`` registers every ``vitpe_*`` model with timm."""
from .pe import (Grid, PosContext, PositionalEncoding, ResolutionStrategy, ZooEntry, create_pos_encoding,
                 list_pos_encodings, register_pos_encoding, scheme_options, use_strategy)
from .models import VisionTransformer, ZOO, checkpoint_filter_fn

__version__ = '0.2.0.dev0'


def list_models():
    """Names of every vitpe model registered with timm."""
    return sorted(ZOO)
