"""Deprecated: ``vitpe.pe.absolute`` held none, ape, sincos, abswin and fourier;
they now live in vitpe.pe.{none,ape,sincos,abswin,fourier,common}.
This alias stays for one release (see CHANGELOG.md)."""
import warnings

from .common import INTERPOLATIONS_2D as INTERPOLATIONS, LearnedTable, add_to_patches, cached_resample
from .none import NoPE
from .ape import AbsolutePE
from .sincos import SinCosPE
from .abswin import AbsWinPE
from .fourier import FourierPE  # noqa: F401
from .strategy import current_strategy, position_scale


def grid_scale(pe, grid):
    """0.1.0's per-axis coordinate scale of position interpolation, now from the current context's strategy."""
    return position_scale(pe.grid_size, grid.shape, current_strategy())


warnings.warn("vitpe.pe.absolute is deprecated; import from vitpe.pe.{none,ape,sincos,abswin,fourier,common}",
              DeprecationWarning, stacklevel=2)
