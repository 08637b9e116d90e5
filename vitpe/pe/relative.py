"""Deprecated: ``vitpe.pe.relative`` held decomposed;
they now live in vitpe.pe.decomposed.
This alias stays for one release (see CHANGELOG.md)."""
import warnings

from .decomposed import DecomposedRelPos, GridIndices, decomposed_bias  # noqa: F401

warnings.warn("vitpe.pe.relative is deprecated; import from vitpe.pe.decomposed",
              DeprecationWarning, stacklevel=2)
