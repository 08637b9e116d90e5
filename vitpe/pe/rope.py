"""Deprecated: ``vitpe.pe.rope`` held rope_axial and rope_mixed;
they now live in vitpe.pe.{rope_axial,rope_mixed,rotary}.
This alias stays for one release (see CHANGELOG.md)."""
import warnings

from .rotary import RotaryPE as _RoPEBase
from .rope_axial import RoPEAxial
from .rope_mixed import RoPEMixed  # noqa: F401

warnings.warn("vitpe.pe.rope is deprecated; import from vitpe.pe.{rope_axial,rope_mixed,rotary}",
              DeprecationWarning, stacklevel=2)
