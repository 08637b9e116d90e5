"""Pieces shared by the schemes: option checks, coordinate grids, sin-cos bands, table resampling and
learned tables, adding a position to patch tokens, a bias over the patch grid padded for prefix tokens,
and depthwise convolutions on the grid. Every function takes the grid shape as a tuple of any rank
((T,) H, W)."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from timm.layers import trunc_normal_

from .strategy import ResolutionStrategy, position_scale

INTERPOLATIONS_2D = ('bicubic', 'bilinear', 'nearest', 'area')
INTERPOLATIONS_3D = ('trilinear', 'nearest', 'area')
INFLATIONS = ('central', 'average')  # how a 2D kernel gets a time axis (``inflate_kernel``)


# --------------------------------------------------------------------------------------------- option checks
def check_choice(scheme: str, option: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{scheme}: invalid {option}={value!r}; expected one of {list(choices)}")


def check_positive(scheme: str, option: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{scheme}: invalid {option}={value!r}; expected a positive number")


def check_positive_int(scheme: str, option: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{scheme}: invalid {option}={value!r}; expected a positive integer")


def check_bool(scheme: str, option: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{scheme}: invalid {option}={value!r}; expected True or False")


# --------------------------------------------------------------------------------------------- coordinates
def coord_grid(shape: Sequence[int], device=None, dtype=torch.float32, scale: Optional[Sequence[float]] = None):
    """Integer coordinates of every cell of ``shape``, row major: (prod(shape), rank).

    Column ``a`` holds the index along axis ``a`` (so for (H, W): column 0 = row r, column 1 = col c),
    optionally multiplied by ``scale[a]`` (position interpolation)."""
    axes = [torch.arange(s, device=device, dtype=torch.float32) for s in shape]
    if scale is not None:
        axes = [a * float(f) for a, f in zip(axes, scale)]
    return torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1).reshape(-1, len(shape)).to(dtype)


# --------------------------------------------------------------------------------------------- randomised positions
def check_random_positions(scheme: str, factor) -> None:
    """``random_positions``: 0 (off) or the factor (>= 1) of the range positions are drawn from in training."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (factor == 0 or factor >= 1):
        raise ValueError(f"{scheme}: invalid random_positions={factor!r}; expected 0 (off) or a factor >= 1 "
                         f"(positions drawn from that many times the training grid, e.g. 4)")


def random_extents(shape: Sequence[int], factor: float) -> Tuple[int, ...]:
    """The range each axis's randomised positions are drawn from: ceil(factor * size)."""
    return tuple(max(int(s), math.ceil(factor * s)) for s in shape)


def random_positions(shape: Sequence[int], factor: float, batch: int, device=None) -> torch.Tensor:
    """Randomised positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length Generalization",
    Sec. 3) on a grid: per sample and per axis, ``size`` distinct integers drawn uniformly from
    range(ceil(factor * size)) and sorted, so the grid keeps its order and a test grid up to ``factor`` times
    larger uses positions seen in training. Returns (batch, N, rank) integers in ``coord_grid`` order."""
    index = coord_grid(shape, device=device, dtype=torch.long)
    axes = []
    for a, (size, extent) in enumerate(zip(shape, random_extents(shape, factor))):
        drawn = torch.rand(batch, extent, device=device).argsort(-1)[:, :size].sort(-1).values  # (batch, size)
        axes.append(drawn[:, index[:, a]])
    return torch.stack(axes, dim=-1)


class GridPositions:
    """The integer patch positions of one forward, for schemes with coordinates: the grid's own (``coord_grid``,
    one set for the batch) or, when the scheme draws randomised positions (training with ``random_positions``),
    one sorted draw per sample (``random_positions``), made on first use and kept for the forward (every layer,
    and a recomputation under gradient checkpointing, sees the same draw). ``extents[a]``: positions along
    axis ``a`` lie in range(extents[a]); ``scale``: the per-axis factor of position interpolation (or None)."""

    def __init__(self, pe, shape: Tuple[int, ...], strategy: ResolutionStrategy, device):
        self.shape, self.device = tuple(shape), device
        self.factor = pe.random_positions if pe.draws_positions else 0.
        self.extents = random_extents(shape, self.factor) if self.factor else self.shape
        self.scale = position_scale(pe.grid_size, self.shape, strategy)
        self.fixed = None if self.factor else pe.cached(
            ('positions', self.shape, device), lambda: coord_grid(shape, device=device, dtype=torch.long)[None])
        self._drawn = None

    def of_batch(self, batch: int) -> torch.Tensor:
        """(1, N, rank) the grid's positions, or (batch, N, rank) drawn ones."""
        if not self.factor:
            return self.fixed
        if self._drawn is None or self._drawn.shape[0] != batch:
            self._drawn = random_positions(self.shape, self.factor, batch, self.device)
        return self._drawn

    def coords(self, batch: int) -> torch.Tensor:
        """Float coordinates (1 | batch, N, rank), position interpolation applied."""
        pos = self.of_batch(batch).float()
        if self.scale is not None:
            pos = pos * torch.tensor(self.scale, device=pos.device, dtype=pos.dtype)
        return pos


def grid_coords(pe, shape: Tuple[int, ...], strategy: ResolutionStrategy, device) -> torch.Tensor:
    """Patch coordinates (N, rank) of a grid under ``strategy`` (position interpolation scales them into
    the reference grid's range), cached by the scheme."""
    scale = position_scale(pe.grid_size, shape, strategy)
    return pe.cached(('coords', shape, scale, device), lambda: coord_grid(shape, device=device, scale=scale))


def axis_split(pairs: int, rank: int, split: Optional[Sequence[int]] = None, what: str = '') -> Tuple[int, ...]:
    """How many frequencies (channel pairs) each axis gets, in grid order ((T,) H, W), out of ``pairs``.

    ``split`` given: checked (positive integers summing to ``pairs``). Default: an even split; where ``pairs`` is
    not a multiple of the rank (3D with head_dim 64: 32 pairs), each spatial axis gets ceil(pairs / rank) and
    time the rest ((t, h, w) = (10, 11, 11) of 32), so T = 1 leaves the fewest channels unused. ``what`` names the
    caller in errors, e.g. 'rope_axial: head_dim=20'."""
    if split is not None:
        split = (split,) if isinstance(split, int) else tuple(split)
        if len(split) != rank or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in split) \
                or sum(split) != pairs:
            raise ValueError(f"{what}: invalid split={split!r}; expected {rank} positive integers (frequencies per "
                             f"axis, grid order) summing to {pairs}")
        return split
    if pairs % rank == 0:
        return (pairs // rank,) * rank
    if rank == 2 or pairs < rank:
        raise ValueError(f"{what} must be divisible by {2 * rank} for a rank-{rank} grid (or pass split=)")
    spatial = -(-pairs // rank)
    return (pairs - spatial * (rank - 1),) + (spatial,) * (rank - 1)


def axial_ladder(split: Sequence[int], theta: float, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(freqs (P,), axis (P,)): per axis a (grid order) a ladder 1 / theta^(k / n_a), k < n_a, laid out last
    axis first (the column's frequencies first, as MAE and timm's RoPE for 2D); ``axis`` is each one's axis."""
    freqs, axis = [], []
    for a in reversed(range(len(split))):
        n = split[a]
        freqs.append(1. / theta ** (torch.arange(n, device=device, dtype=torch.float32) / n))
        axis.append(torch.full((n,), a, device=device, dtype=torch.long))
    return torch.cat(freqs), torch.cat(axis)


def sincos_embed(shape: Sequence[int], dim: int, temperature: float = 10000., device=None,
                 scale: Optional[Sequence[float]] = None, split: Optional[Sequence[int]] = None) -> torch.Tensor:
    """MAE-style fixed sin-cos embedding, (prod(shape), dim).

    The width is split over the axes (``axis_split``: evenly by default), last axis first (MAE puts the column
    first for 2D); the part of axis a is [sin(p * w_k), cos(p * w_k)], w_k = 1 / temperature^(k / n_a), k < n_a."""
    rank = len(shape)
    if dim % 2:
        raise ValueError(f"sincos: dim={dim} must split into {rank} even parts (one per axis)")
    return sincos_of(coord_grid(shape, device=device, scale=scale), dim, temperature,
                     axis_split(dim // 2, rank, split, f"sincos: dim={dim}"))


def sincos_of(coords: torch.Tensor, dim: int, temperature: float = 10000.,
              split: Optional[Sequence[int]] = None) -> torch.Tensor:
    """``sincos_embed`` of given coordinates (..., N, rank): (..., N, dim); ``split``: frequencies per axis
    (``axis_split``'s default when None)."""
    rank = coords.shape[-1]
    split = axis_split(dim // 2, rank, split, f"sincos: dim={dim}") if split is None else split
    embs = []
    for a in reversed(range(rank)):
        omega = 1. / temperature ** (torch.arange(split[a], device=coords.device, dtype=torch.float32) / split[a])
        ang = coords[..., a:a + 1] * omega
        embs += [ang.sin(), ang.cos()]
    return torch.cat(embs, dim=-1)


# --------------------------------------------------------------------------------------------- tables
def resample_table(table: torch.Tensor, new_shape: Sequence[int], interpolation: str = 'bicubic',
                   antialias: bool = True) -> torch.Tensor:
    """Resample a channels-last table (1, *old_shape, C) to (1, *new_shape, C). The defaults are timm's
    ``resample_abs_pos_embed`` (bicubic with antialias, i.e. PIL's kernel a = -0.5 both ways; without
    antialias PyTorch's bicubic has a = -0.75, as SAM2, DeiT and RoPE-ViT's own code).

    A (T, H, W) table is resampled along T first (linearly; 'nearest' / 'area' as asked), then every frame as a 2D
    table with ``interpolation`` ('trilinear': bilinear): so a table of one frame resamples as the 2D table does,
    and 'trilinear' is PyTorch's trilinear (which is separable). A (T,) table: linear ('bicubic'/'bilinear' given)."""
    old_shape = tuple(table.shape[1:-1])
    new_shape = tuple(new_shape)
    if not torch.compiler.is_compiling() and old_shape == new_shape:  # compiled: resample (exact at equal size)
        return table
    rank = len(old_shape)
    choices = {1: ('bicubic', 'bilinear', 'linear', 'nearest', 'area'), 2: INTERPOLATIONS_2D,
               3: INTERPOLATIONS_2D + INTERPOLATIONS_3D}.get(rank, ())
    if interpolation not in choices:
        raise ValueError(f"interpolation={interpolation!r} is not available for a rank-{rank} table; "
                         f"expected one of {list(choices)}")
    if rank == 2:
        return _interpolate(table, new_shape, interpolation, antialias)
    time_mode = interpolation if interpolation in ('nearest', 'area') else 'linear'
    x = _interpolate(table.flatten(2).transpose(0, 2), new_shape[:1], time_mode, antialias).transpose(0, 2)
    if rank == 1:
        return x
    x = x.unflatten(2, old_shape[1:] + table.shape[-1:])[0]  # (T', H, W, C): the frames as a batch of 2D tables
    trilinear = interpolation == 'trilinear'
    return _interpolate(x, new_shape[1:], 'bilinear' if trilinear else interpolation, antialias and not trilinear)[None]


def _interpolate(table: torch.Tensor, size, mode: str, antialias: bool) -> torch.Tensor:
    """F.interpolate of a channels-last batch (B, *shape, C) to (B, *size, C), in float32 (compiled: always, so
    symbolic sizes are not compared)."""
    if not torch.compiler.is_compiling() and tuple(table.shape[1:-1]) == tuple(size):
        return table
    kw = {'antialias': antialias} if mode in ('bicubic', 'bilinear') else {}
    x = F.interpolate(table.float().movedim(-1, 1), size=tuple(size), mode=mode, **kw)
    return x.movedim(1, -1).to(table.dtype)


def resample_1d(table: torch.Tensor, length: int, from_length: Optional[int] = None) -> torch.Tensor:
    """Linear resampling of a (L, C) table along L (SAM / ViTDet relative tables); ``from_length`` is L when the
    caller knows it (needed under FX tracing)."""
    if not torch.compiler.is_compiling() and (from_length if from_length is not None else table.shape[0]) == length:
        return table  # compiled: resampled always (exact at equal length), so symbolic sizes are not specialised
    x = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode='linear')
    return x[0].t().to(table.dtype)


def table_shape(module: nn.Module, name: str) -> Tuple[int, ...]:
    """The grid shape of the table parameter ``name`` of ``module``, read from the parameter itself (not through
    attribute access, which FX symbolic tracing turns into a proxy), so it is a tuple of ints even when tracing."""
    return tuple(module._parameters[name].shape[1:-1])


def cached_resample(pe, table: torch.Tensor, shape, interpolation: str, antialias: bool = True,
                    from_shape: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
    """``resample_table`` memoised by the scheme when no gradient is needed (inference sweeps); ``from_shape``
    is the table's grid when the caller knows it (needed under FX tracing)."""
    if torch.compiler.is_compiling():  # symbolic sizes: resample (exact at equal size) instead of comparing them
        return resample_table(table, shape, interpolation, antialias)
    if (from_shape if from_shape is not None else tuple(table.shape[1:-1])) == tuple(shape):
        return table
    if torch.is_grad_enabled() and table.requires_grad:
        return resample_table(table, shape, interpolation, antialias)
    key = ('table', id(table), table._version, tuple(shape), interpolation, antialias)
    return pe.cached(key, lambda: resample_table(table, shape, interpolation, antialias))


def add_to_patches(x: torch.Tensor, pos: torch.Tensor, num_prefix: int,
                   prefix_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, p + N, D) plus pos (1, N, D) on the patch tokens (and prefix_pos (1, p, D) on the prefix)."""
    if prefix_pos is not None:
        return x + torch.cat([prefix_pos, pos], dim=1).to(x.dtype)
    if not num_prefix:
        return x + pos.to(x.dtype)
    return torch.cat([x[:, :num_prefix], x[:, num_prefix:] + pos.to(x.dtype)], dim=1)


class LearnedTable(nn.Module):
    """A learned channels-last table ``weight`` (1, *grid, D) used at any grid by resampling, with optional
    rows ``prefix`` (1, p, D) for prefix tokens. ``interpolation`` and ``antialias`` say how it is resampled
    (default timm's ``resample_abs_pos_embed``: bicubic with antialias; SAM2, DeiT and RoPE-ViT's own code
    resize without antialias). The scheme's ``resize_state_dict`` resizes it on load. ``axes``: the axes of the
    scheme's grid the table spans (None: all; separable APE's spatial table (1, 2), its temporal one (0,))."""

    def __init__(self, grid_size, dim: int, num_prefix: int = 0, interpolation: str = 'bicubic',
                 antialias: bool = True, scheme: str = 'ape', axes: Optional[Tuple[int, ...]] = None):
        super().__init__()
        check_choice(scheme, 'interpolation', interpolation, INTERPOLATIONS_2D)
        check_bool(scheme, 'antialias', antialias)
        self.interpolation, self.antialias, self.axes = interpolation, antialias, axes
        grid_size = self.own(grid_size)
        self.weight = nn.Parameter(torch.zeros(1, *grid_size, dim))
        self.prefix = nn.Parameter(torch.zeros(1, num_prefix, dim)) if num_prefix else None
        trunc_normal_(self.weight, std=.02)
        if self.prefix is not None:
            trunc_normal_(self.prefix, std=.02)

    def at(self, pe, shape, strategy: Optional[ResolutionStrategy] = None) -> torch.Tensor:
        """(1, prod(shape), D): the table at ``shape`` (interpolated as ``strategy`` says, if it says)."""
        interpolation = (strategy and strategy.interpolation) or self.interpolation
        return cached_resample(pe, self.weight, shape, interpolation, self.antialias,
                               table_shape(self, 'weight')).flatten(1, -2)

    def add(self, pe, x: torch.Tensor, grid, strategy: Optional[ResolutionStrategy] = None) -> torch.Tensor:
        return add_to_patches(x, self.at(pe, grid.shape, strategy), grid.num_prefix, self.prefix)

    def own(self, shape) -> Tuple[int, ...]:
        """The part of a scheme grid ``shape`` this table spans."""
        return tuple(shape) if self.axes is None else tuple(shape[a] for a in self.axes)

    def resize_state_dict(self, state_dict, prefix: str, grid_size) -> None:
        key = prefix + 'weight'
        grid_size = self.own(grid_size)
        if key in state_dict and tuple(state_dict[key].shape[1:-1]) != tuple(grid_size):
            state_dict[key] = resample_table(state_dict[key], grid_size, self.interpolation, self.antialias)


# --------------------------------------------------------------------------------------------- biases
def grid_bias(rows: slice, grid, lead: Tuple[int, ...],
              add_patch_part: Callable[[int, torch.Tensor, torch.Tensor], None],
              prefix_fill: float = 0., dtype=torch.float32, device=None,
              keys_first: bool = False) -> torch.Tensor:
    """A (*lead, c, N) tensor over the query ``rows`` (a contiguous slice of the p + N_patch sequence, prefix
    first) and every key, for a quantity defined between patch tokens (an attention bias, bucket ids).

    Pairs with a prefix token hold the number ``prefix_fill`` (0 for a bias, the prefix bucket for bucket ids).
    ``add_patch_part(skip, patch_rows, out)`` adds the patch-query x patch-key part into the zeroed view ``out``
    (*lead, c - skip, N_patch) in place and returns the result of its last in-place op (FX tracing needs it):
    ``skip`` is the number of prefix rows at the start of the chunk (so the caller's queries are
    ``q[..., skip:, :]``), ``patch_rows`` the flat patch indices of the other rows.
    With ``keys_first`` the layout is (*lead, N, c) (every key against the query rows; the view is
    (*lead, N_patch, c - skip)). Memory is O(c N), so the attention can work in row chunks on any grid."""
    p, n = grid.num_prefix, grid.num_tokens
    first, stop = (0, n) if rows == slice(None) else rows.indices(n)[:2]  # n may be symbolic when compiled
    c = stop - first
    skip = min(max(p - first, 0), c)
    shape = (*lead, n, c) if keys_first else (*lead, c, n)
    out = torch.full(shape, prefix_fill, dtype=dtype, device=device)
    if skip < c:
        patch_rows = torch.arange(first + skip - p, stop - p, device=device)
        rows_cols = (slice(skip, None), slice(p, None))
        index = (Ellipsis,) + (rows_cols[::-1] if keys_first else rows_cols)
        patch_part = out[index]
        if prefix_fill != 0:
            patch_part = patch_part.zero_()
        written = add_patch_part(skip, patch_rows, patch_part)
        if is_fx_symbolic_tracing():  # FX drops in-place writes whose result goes unused: assemble the parts
            first_dims = (p, skip) if keys_first else (skip, p)
            head, rest = out[..., :first_dims[0], :], out[..., first_dims[0]:, :first_dims[1]]
            return torch.cat([head, torch.cat([rest, written], dim=-1)], dim=-2)
    return out


# --------------------------------------------------------------------------------------------- convolutions
def inflate_kernel(kernel: torch.Tensor, frames: int, mode: str = 'central') -> torch.Tensor:
    """A 2D kernel (O, I, kh, kw) as a 3D one (O, I, frames, kh, kw): 'central' puts it on the middle frame
    (index frames // 2) with zeros elsewhere (ViViT), 'average' puts kernel / frames on every frame (I3D)."""
    check_choice('inflation', 'mode', mode, INFLATIONS)
    if mode == 'average':
        return (kernel / frames).unsqueeze(2).repeat(1, 1, frames, 1, 1)
    out = kernel.new_zeros(*kernel.shape[:2], frames, *kernel.shape[2:])
    out[:, :, frames // 2] = kernel
    return out


def depthwise_conv(rank: int, channels: int, kernel_size: int) -> nn.Module:
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[rank]
    return conv(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


def check_kernel(scheme: str, kernel_size) -> None:
    if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"{scheme}: invalid kernel_size={kernel_size!r}; expected a positive odd integer")


def conv_on_grid(conv: nn.Module, x: torch.Tensor, shape) -> torch.Tensor:
    """conv applied to patch tokens (B, N, C) laid out on the grid ``shape``; returns (B, N, C)."""
    b, n, c = x.shape
    y = conv(x.transpose(1, 2).reshape(b, c, *shape))
    return y.flatten(2).transpose(1, 2)
