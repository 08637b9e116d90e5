"""Deprecated: ``vitpe.pe.functional`` held the shared functions;
they now live in vitpe.pe.{common,irpe,rotary,decomposed}.
This alias stays for one release (see CHANGELOG.md)."""
import warnings

from .common import (INTERPOLATIONS_2D, coord_grid, resample_1d, resample_table,  # noqa: F401
                     sincos_embed)
from .decomposed import relative_index
from .irpe import (IRPE_METHODS, irpe_bucket_ids, irpe_num_buckets, irpe_offset_buckets,  # noqa: F401
                   irpe_offset_lookup, piecewise_index)
from .rotary import (rope_axial_angles, rope_axial_freqs, rope_mixed_angles, rope_mixed_init,  # noqa: F401
                     rotate_pairs)  # noqa: F401

warnings.warn("vitpe.pe.functional is deprecated; import from vitpe.pe.{common,irpe,rotary,decomposed}",
              DeprecationWarning, stacklevel=2)
