"""Deprecated: ``vitpe.pe.relative`` held decomposed;
they now live in vitpe.pe.decomposed.
This alias stays for one release (see CHANGELOG.md)."""
import warnings

from .decomposed import DecomposedRelPos, GridIndices, decomposed_bias  # noqa: F401


def grid_indices(shape, device=None):
    """0.1.0's (coordinates, per-axis relative indices) of a grid; now ``GridIndices.of``."""
    indices = GridIndices.of(shape, device)
    return indices.coords, indices.rel_index


warnings.warn("vitpe.pe.relative is deprecated; import from vitpe.pe.decomposed",
              DeprecationWarning, stacklevel=2)
