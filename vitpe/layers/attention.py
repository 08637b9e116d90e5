"""The one multi-head self-attention of vitpe: qkv -> scheme hooks -> SDPA -> scheme value hook."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..pe.base import PosContext

BACKENDS = ('sdpa', 'flex')


class Attention(nn.Module):
    """Multi-head self-attention with the positional scheme's hooks (see ``vitpe.pe.base``).

    Goes through ``F.scaled_dot_product_attention``; a bias is passed as ``attn_mask`` only when the
    scheme returns one, so schemes without a bias keep SDPA's fused kernels. When the scheme needs the
    attention probabilities (iRPE on values), they are computed explicitly.

    Paths (``path_for``): 'fused' (no bias), 'bias' (one (B, heads, N, N) bias), 'chunked' (the bias,
    and the probabilities if needed, built for ``chunk`` query rows at a time, so memory stays
    O(chunk x N) however large the grid: used when a full bias would exceed ``bias_budget_mb``; not under
    torch.compile / torch.export, whose graph cannot branch on symbolic sizes: there the bias is whole);
    'flex' (``backend = 'flex'``, see ``set_attention_backend``): the scheme's bias as a FlexAttention score_mod,
    where the scheme gives one (``PositionalEncoding.score_mod``) and the forward needs nothing else.
    """
    bias_budget_mb: float = 16.
    # ``observer(attn, ctx, layer, rows)``: called with the probabilities of every row chunk when set
    # (``vitpe.eval.diagnostics.AttentionProbe``); they are then computed explicitly, chunk by chunk
    observer: Optional[Callable] = None
    # 'sdpa' or 'flex': FlexAttention for schemes whose bias has a score_mod form (for GPUs: torch's fused
    # flex kernels never build the (B, heads, N, N) bias; on the CPU it measured no faster than SDPA with a bias)
    backend: str = 'sdpa'

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 attn_drop: float = 0., proj_drop: float = 0., norm_layer=nn.LayerNorm, windowed: bool = False):
        super().__init__()
        self.windowed = windowed  # attends within the windows of ``ctx.window`` when the forward has them
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def chunk_rows(self, batch: int, n: int, elem_size: int) -> int:
        """Query rows per chunk so that a (batch, heads, rows, n) tensor stays within the budget."""
        per_row = batch * self.num_heads * n * elem_size
        return max(1, min(n, int(self.bias_budget_mb * 2 ** 20 // per_row)))

    def path_for(self, pe, batch: int, n: int, elem_size: int = 4) -> str:
        if not pe.uses('bias') and not pe.needs_attn_probs and self.observer is None:
            return 'fused'
        if torch.compiler.is_compiling():  # sizes may be symbolic: one full bias (a graph does not branch on them)
            return 'bias'
        return 'bias' if self.chunk_rows(batch, n, elem_size) >= n else 'chunked'

    def flex_score_mod(self, pe, q, ctx: PosContext, layer: int, mask, sizes) -> Optional[Callable]:
        """The scheme's score_mod when this forward can go through FlexAttention: the 'flex' backend, a bias
        scheme that gives one, and nothing that only the other paths do (a value hook, an observer,
        padded windows, attention dropout in training, FX tracing, export, ONNX). Flex runs compiled on CUDA;
        on the CPU only as torch's eager reference, which builds the whole score matrix: there only for what
        fits one bias block ('bias' path), without gradients through attention (torch has no CPU backward for
        it) and not under torch.compile (inductor's CPU flex kernel rejected these score_mods in torch 2.14):
        what the tests compare. Other devices keep SDPA."""
        if (self.backend != 'flex' or not pe.uses('bias') or pe.uses('value') or self.observer is not None
                or mask is not None or (self.training and self.attn_drop.p > 0) or is_fx_symbolic_tracing()
                or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            return None
        if q.device.type == 'cpu':
            if q.requires_grad or torch.compiler.is_compiling() or self.path_for(pe, *sizes) != 'bias':
                return None
        elif q.device.type != 'cuda':
            return None
        return pe.score_mod(ctx, layer, ctx.logit_scale, flex_dtype(q))

    def _attend(self, q, k, v, ctx: PosContext, layer: int, rows: slice, mask=None):
        """Attention output of the query rows ``rows`` (q holds those rows only); ``mask`` (B, 1, 1, N) is added
        to the logits (-inf at padded keys of windows)."""
        pe = ctx.pe
        bias = pe.bias(q, k, ctx, layer, rows) if pe.uses('bias') else None
        scale = self.scale * ctx.logit_scale
        if bias is not None and ctx.logit_scale != 1.0:
            bias = bias * ctx.logit_scale
        if mask is not None:
            bias = mask if bias is None else bias + mask
        attn = None
        # explicit probabilities when the value hook needs them, and for a bias under ONNX export (its
        # decomposition of SDPA with a mask fails on symbolic sizes)
        explicit = pe.needs_attn_probs or self.observer is not None
        if explicit or (bias is not None and torch.onnx.is_in_onnx_export()):
            logits = (q * scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            attn = self.attn_drop(logits.softmax(dim=-1))
            if self.observer is not None:
                self.observer(attn, ctx, layer, rows)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0., scale=scale)
        if pe.uses('value'):
            out = pe.value(out, v, attn, ctx, layer, rows)
        return out

    def forward(self, x: torch.Tensor, ctx: PosContext, layer: int) -> torch.Tensor:
        pe = ctx.pe
        if pe.uses('attn_input'):
            x = pe.attn_input(x, ctx, layer)
        if not self.windowed or ctx.window is None:
            return self.attend_tokens(x, ctx, layer)
        layout, p = ctx.window.layout, ctx.grid.num_prefix  # each window attends as a grid of its own
        return layout.merge(self.attend_tokens(layout.split(x, p), ctx.window, layer), p)

    def attend_tokens(self, x: torch.Tensor, ctx: PosContext, layer: int) -> torch.Tensor:
        """Attention over the tokens (B, p + N, C) of the grid ``ctx.grid`` (a window's in window blocks: then
        B counts windows, and padded keys are masked)."""
        pe = ctx.pe
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if pe.uses('qk'):
            q, k = pe.qk(q, k, ctx, layer)
        padded = ctx.layout.padding(ctx.grid.num_prefix, ctx.device) if ctx.layout is not None else None
        mask = None
        if padded is not None:  # padded (windows, n): -inf at padded keys, (B, 1, 1, n); their values zero
            windows = (-1, ctx.layout.num_windows)  # B = images x windows (no size read: FX traces it)
            zero = torch.zeros_like(q[:, :1, :1, :1]).unflatten(0, windows)  # (images, windows, 1, 1, 1)
            mask = torch.where(padded[:, None, None], float('-inf'), zero).flatten(0, 1)
            v = v.unflatten(0, windows).masked_fill(padded[:, None, :, None], 0.).flatten(0, 1)
        # the path depends on sizes; under FX symbolic tracing they are proxies: decide for one float32 image
        sizes = (1, ctx.grid.num_tokens, 4) if is_fx_symbolic_tracing() else (b, n, q.element_size())
        score_mod = self.flex_score_mod(pe, q, ctx, layer, mask, sizes)
        if score_mod is not None:
            dtype = flex_dtype(q)  # SDPA under autocast runs in the autocast dtype: flex too
            out = flex_attention(q.to(dtype), k.to(dtype), v.to(dtype), score_mod, self.scale * ctx.logit_scale)
        elif self.path_for(pe, *sizes) == 'chunked':
            step = self.chunk_rows(*sizes)
            out = torch.cat([self._attend(q[:, :, i:i + step], k, v, ctx, layer, slice(i, i + step), mask)
                             for i in range(0, sizes[1], step)], dim=2)
        else:
            out = self._attend(q, k, v, ctx, layer, slice(None), mask)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def flex_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype flex attends in: autocast's where it is on (as SDPA would), else q's."""
    device = q.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention as flex
    return torch.compile(flex)


def flex_attention(q, k, v, score_mod: Callable, scale: float) -> torch.Tensor:
    """torch's flex_attention: compiled once on CUDA (its fused kernels exist only compiled; inside a compiled
    model the model's compilation covers it); eager elsewhere (the CPU: a reference implementation)."""
    from torch.nn.attention.flex_attention import flex_attention as flex
    if q.is_cuda and not torch.compiler.is_compiling():
        flex = _compiled_flex_attention()
    return flex(q, k, v, score_mod=score_mod, scale=scale)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Every attention of ``model`` attends through ``backend``: 'sdpa' (the default) or 'flex' (FlexAttention
    where the scheme's bias has a score_mod form: alibi, fire, kerple, lookhere; other schemes and forwards
    keep SDPA). Returns the model."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {list(BACKENDS)}, got {backend!r}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = backend
    return model
