"""Deprecated: ``vitpe.pe.conv`` held cpe and lepe;
they now live in vitpe.pe.{cpe,lepe,common}.
This alias stays for one release (see CHANGELOG.md)."""
import warnings

from .common import check_kernel, conv_on_grid, depthwise_conv
from .cpe import ConditionalPE
from .lepe import LocallyEnhancedPE  # noqa: F401

warnings.warn("vitpe.pe.conv is deprecated; import from vitpe.pe.{cpe,lepe,common}",
              DeprecationWarning, stacklevel=2)
