"""The one ViT trunk of vitpe. The positional scheme is a module passed in by name (``pos_enc``);
changing it changes nothing else. Parameter names follow timm's ``VisionTransformer`` so that timm
layers, optimizers and tools apply unchanged."""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.fx
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint
from timm.layers import resample_patch_embed, trunc_normal_
from timm.models._features import feature_take_indices

from ..layers import Block, PatchEmbed
from ..layers.patch_embed import clip_size, to_tuple
from ..layers.window import WindowLayout, to_window
from . import inflate
from ..pe import Grid, PosContext, create_pos_encoding
from ..pe.strategy import (NO_STRATEGY, MovedStrategyAttribute, ResolutionStrategy, attention_logit_scale,
                           current_strategy)

__all__ = ['VisionTransformer']

GLOBAL_POOLS = ('token', 'avg', '')
StrategySpec = Optional[Union[str, ResolutionStrategy]]


def _check_trunk_args(global_pool: str, class_token: bool, in_chans) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"invalid global_pool={global_pool!r}; expected one of {list(GLOBAL_POOLS)}")
    if global_pool == 'token' and not class_token:
        raise ValueError("global_pool='token' needs class_token=True")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans <= 0:
        raise ValueError(f"invalid in_chans={in_chans!r}; expected a positive integer")


def drop_path_rates(rate: float, depth: int, mode: str = 'linear') -> List[float]:
    """Stochastic depth per block: 'linear' from 0 to ``rate`` (timm, DeiT), or 'constant' (DeiT-III)."""
    if mode not in ('linear', 'constant'):
        raise ValueError(f"invalid drop_path_mode={mode!r}; expected 'linear' or 'constant'")
    return [rate if mode == 'constant' else rate * i / max(depth - 1, 1) for i in range(depth)]


class VisionTransformer(nn.Module):
    """Vision Transformer over images (patch_size of 2 entries) or video (3 entries: T, H, W) with a
    pluggable positional scheme.

    Args (keyword): img_size (reference size: tables are learned at its grid; any size the patch
    divides works at run time), patch_size, in_chans, num_classes, global_pool ('token', 'avg', ''),
    embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_norm, init_values (LayerScale, None = off),
    class_token, reg_tokens, fc_norm (None: on for avg pooling), pre_norm, drop_rate, pos_drop_rate,
    attn_drop_rate, proj_drop_rate, drop_path_rate, drop_path_mode ('linear': block i of L at
    drop_path_rate * i / (L - 1), timm and DeiT; 'constant': every block at drop_path_rate, DeiT-III's
    models_v2.py), norm_layer, act_layer, pos_enc (scheme name, see
    ``vitpe.list_pos_encodings()``), pos_enc_args (the scheme's options), num_frames (video: the reference
    clip length T, with img_size the frame size), window_size (None: global
    attention everywhere; an int or one per axis: ViTDet's window attention, see ``vitpe.layers.window``),
    global_blocks (with a window: the indices of the blocks that keep global attention, ViTDet-B: 2, 5, 8, 11).
    """

    def __init__(
            self,
            *,
            img_size: Union[int, Sequence[int]] = 224,
            patch_size: Union[int, Sequence[int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            qk_norm: bool = False,
            init_values: Optional[float] = None,
            class_token: bool = True,
            reg_tokens: int = 0,
            fc_norm: Optional[bool] = None,
            pre_norm: bool = False,
            drop_rate: float = 0., pos_drop_rate: float = 0., attn_drop_rate: float = 0., proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_path_mode: str = 'linear',
            norm_layer=None, act_layer=None,
            pos_enc: str = 'ape',
            pos_enc_args: Optional[Dict[str, Any]] = None,
            num_frames: Optional[int] = None,
            window_size: Optional[Union[int, Sequence[int]]] = None, global_blocks: Sequence[int] = (),
    ):
        super().__init__()
        _check_trunk_args(global_pool, class_token, in_chans)
        rank = 2 if isinstance(patch_size, int) else len(tuple(patch_size))
        patch_size, img_size = to_tuple(patch_size, rank, 'patch_size'), clip_size(img_size, num_frames, rank)
        norm_layer, act_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6), act_layer or nn.GELU
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens, self.num_reg_tokens = int(class_token) + reg_tokens, reg_tokens
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=not pre_norm)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.pos_enc = create_pos_encoding(
            pos_enc, dim=embed_dim, num_heads=num_heads, depth=depth, grid_size=self.patch_embed.grid_size,
            num_prefix_tokens=self.num_prefix_tokens, **(pos_enc_args or {}))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = norm_layer(embed_dim) if pre_norm else nn.Identity()
        dpr = drop_path_rates(drop_path_rate, depth, drop_path_mode)
        block = partial(Block, embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm,
                        init_values=init_values, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate,
                        norm_layer=norm_layer, act_layer=act_layer)
        self.blocks = nn.ModuleList([block(layer=i, drop_path=dpr[i]) for i in range(depth)])
        self.set_windows(window_size, global_blocks)
        self.feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=max(patch_size))
                             for i in range(depth)]
        use_fc_norm = global_pool == 'avg' if fc_norm is None else fc_norm
        self.norm = norm_layer(embed_dim) if not use_fc_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()
        self._register_load_state_dict_pre_hook(inflate.load_pre_hook, with_module=True)  # image ckpt -> video

    # ------------------------------------------------------------------------------------------ setup
    def init_weights(self) -> None:
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        self.pos_enc.init_weights()

    def set_windows(self, window_size: Optional[Union[int, Sequence[int]]], global_blocks: Sequence[int] = ()) -> None:
        """Window attention (ViTDet) in every block but ``global_blocks``; ``window_size`` None: global everywhere."""
        depth = len(self.blocks)
        global_blocks = (global_blocks,) if isinstance(global_blocks, int) else tuple(global_blocks)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in global_blocks):
            raise ValueError(f"invalid global_blocks={global_blocks!r}; expected block indices in [0, {depth})")
        if window_size is None and global_blocks:
            raise ValueError(f"global_blocks={global_blocks!r} needs a window_size (the other blocks' window)")
        window = None if window_size is None else to_window(window_size, self.patch_embed.rank)
        if window is not None:
            self.pos_enc.set_attention_window(window)  # first: it may refuse the window
        self.window_size, self.global_blocks = window, global_blocks
        for i, blk in enumerate(self.blocks):
            blk.attn.windowed = window is not None and i not in global_blocks

    attn_logit_scaling = MovedStrategyAttribute(lambda strategy: strategy.logit)  # 0.1.0's flag

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        skip = {'cls_token', 'reg_token'}
        for name, p in self.pos_enc.named_parameters():
            skip.add('pos_enc.' + name)  # tables, frequencies, bucket encodings
        return skip

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^cls_token|^reg_token|^pos_enc|^patch_embed|^norm_pre',
                    blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"invalid global_pool={global_pool!r}; expected one of {list(GLOBAL_POOLS)}")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: Optional[Union[int, Sequence[int]]] = None,
                       patch_size: Optional[Union[int, Sequence[int]]] = None,
                       num_frames: Optional[int] = None) -> None:
        """Make ``img_size`` (video: the frame size, or (T, H, W)) and ``num_frames`` (video) the reference size:
        learned tables are resampled to its grid (a new ``patch_size`` resamples the patch projection, timm
        ``resample_patch_embed``, 2D only)."""
        rank = self.patch_embed.rank
        if patch_size is not None:
            patch_size = to_tuple(patch_size, rank, 'patch_size')
            if patch_size != self.patch_embed.patch_size:
                if rank != 2:
                    raise ValueError(f"changing patch_size is only supported for images, got {patch_size}")
                proj = self.patch_embed.proj
                weight = resample_patch_embed(proj.weight, list(patch_size), verbose=False)
                new = nn.Conv2d(proj.in_channels, proj.out_channels, patch_size, patch_size, bias=proj.bias is not None)
                new.weight = nn.Parameter(weight)
                if proj.bias is not None:
                    new.bias = proj.bias
                self.patch_embed.proj = new
                self.patch_embed.patch_size = patch_size
        if img_size is None:
            img_size = self.patch_embed.img_size[-2:] if num_frames is not None else self.patch_embed.img_size
        if rank == 3 and num_frames is None and isinstance(img_size, int):
            num_frames = self.patch_embed.img_size[0]  # a frame size alone keeps the clip length
        img_size = clip_size(img_size, num_frames, rank)
        self.patch_embed.set_input_size(img_size)
        self.pos_enc.set_grid_size(self.patch_embed.grid_size)
        cfg = getattr(self, 'pretrained_cfg', None)
        if isinstance(cfg, dict):
            cfg['input_size'] = (self.patch_embed.in_chans, *img_size[-2:])  # timm's: one frame for video
            if rank == 3:
                cfg.update(num_frames=img_size[0], clip_size=(self.patch_embed.in_chans, *img_size))

    # ------------------------------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor, strategy: StrategySpec = None) -> Tuple[torch.Tensor, PosContext]:
        """Patch embedding, prefix tokens and the scheme's token hook; returns the tokens and the context every
        block gets. ``strategy`` (e.g. 'pi+logit'; None: the current context's, see ``vitpe.use_strategy``) is
        the training-free resolution strategy of this forward."""
        if strategy is None or isinstance(strategy, torch.fx.Proxy):  # FX traces every argument: the context's
            strategy = current_strategy()
        else:
            strategy = ResolutionStrategy.parse(strategy)
        pe = self.pos_enc
        if strategy != NO_STRATEGY:
            pe.check_strategy(strategy)
        x, shape = self.patch_embed(x)
        grid = Grid(shape, self.num_prefix_tokens)
        pe.check_grid(grid)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if prefix:
            x = torch.cat(prefix + [x], dim=1)
        device = pe.default_device() if is_fx_symbolic_tracing() else x.device  # a proxy under FX tracing
        ctx = PosContext(pe, grid, pe.prepare(grid, strategy, device), strategy,
                         attention_logit_scale(pe, grid, strategy), device)
        if self.window_size is not None:  # the context of one window: the scheme prepared for the window grid,
            # as trained at every input size (the window does not grow with the input), so no strategy applies
            window = Grid(self.window_size, self.num_prefix_tokens)
            ctx.window = PosContext(pe, window, pe.prepare(window, NO_STRATEGY, device), NO_STRATEGY,
                                    attention_logit_scale(pe, window, NO_STRATEGY), device,
                                    layout=WindowLayout(tuple(shape), self.window_size))
        if pe.uses('tokens'):
            x = pe.tokens(x, ctx)
        return self.norm_pre(self.pos_drop(x)), ctx

    def _run_block(self, blk: Block, x: torch.Tensor, ctx: PosContext) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(blk, x, ctx, use_reentrant=False)
        return blk(x, ctx)

    def forward_features(self, x: torch.Tensor, strategy: StrategySpec = None) -> torch.Tensor:
        x, ctx = self.embed(x, strategy)
        for blk in self.blocks:
            x = self._run_block(blk, x, ctx)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == 'token':
            return x[:, 0]
        if pool_type == 'avg':
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(self.pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, strategy: StrategySpec = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, strategy))

    # ------------------------------------------------------------------------------------------ features
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            strategy: StrategySpec = None,
    ):
        """Features of the chosen blocks (timm contract): NCHW (NCTHW for video) or NLC."""
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"invalid output_fmt={output_fmt!r}; expected 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x, ctx = self.embed(x, strategy)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x, ctx)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        p = self.num_prefix_tokens
        prefix = [y[:, :p] for y in intermediates]
        intermediates = [y[:, p:] for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [y.reshape(b, *ctx.grid.shape, -1).movedim(-1, 1).contiguous() for y in intermediates]
        if return_prefix_tokens and p:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices
