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

warnings.warn("vitpe.pe.absolute is deprecated; import from vitpe.pe.{none,ape,sincos,abswin,fourier,common}",
              DeprecationWarning, stacklevel=2)
