"""The authors' released checkpoints (iRPE: microsoft/Cream, LaPE: Ingrid725/LaPE, RoPE-ViT: naver-ai/rope-vit)
load through a pretrained tag per source. The state dicts are built here in the authors' key layout and shapes
with random values, saved as their releases are ({'model': state_dict}), loaded by timm's pretrained path
(strict), and the converted model is compared with a forward pass written from the authors' model code."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from vitpe.models.convert import SOURCES

IMG, PATCH = 224, 16
GRID = IMG // PATCH


def trunk(width, depth, layer_scale=False):
    """DeiT's trunk keys (the same in the three codes), random values."""
    sd = {'cls_token': torch.randn(1, 1, width) * .02,
          'patch_embed.proj.weight': torch.randn(width, 3, PATCH, PATCH) * .02,
          'patch_embed.proj.bias': torch.randn(width) * .02, 'norm.weight': 1 + .1 * torch.randn(width),
          'norm.bias': .1 * torch.randn(width), 'head.weight': torch.randn(1000, width) * .02,
          'head.bias': torch.randn(1000) * .02}
    for i in range(depth):
        p = f'blocks.{i}.'
        for norm in ('norm1', 'norm2'):
            sd[p + norm + '.weight'], sd[p + norm + '.bias'] = 1 + .1 * torch.randn(width), .1 * torch.randn(width)
        for name, (out, inp) in {'attn.qkv': (3 * width, width), 'attn.proj': (width, width),
                                 'mlp.fc1': (4 * width, width), 'mlp.fc2': (width, 4 * width)}.items():
            sd[p + name + '.weight'], sd[p + name + '.bias'] = torch.randn(out, inp) * .05, torch.randn(out) * .05
        if layer_scale:
            sd[p + 'gamma_1'], sd[p + 'gamma_2'] = torch.rand(width) + .5, torch.rand(width) + .5
    return sd


def load(tmp_path, name, sd, **kwargs):
    path = tmp_path / 'release.pth'
    torch.save({'model': sd, 'epoch': 299}, path)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


def reference(sd, x, heads, depth, *, pe_first=False, pe_patches=False, lape=False, rpe=None, rope=None):
    """DeiT's forward (eps 1e-6 LayerNorms, GELU MLP, class token), with the papers' position hooks."""
    t = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=PATCH).flatten(2).transpose(1, 2)
    if pe_patches:  # RoPE-ViT + APE: patch rows only, before the class token
        t = t + sd['pos_embed']
    t = torch.cat([sd['cls_token'].expand(len(x), -1, -1), t], 1)
    if pe_first:  # DeiT / iRPE: class row first
        t = t + sd['pos_embed']
    pe = sd['pos_embed'] if lape else None
    B, L, D = t.shape
    for i in range(depth):
        p = f'blocks.{i}.'

        def ln(z, n):
            return F.layer_norm(z, (D,), sd[p + n + '.weight'], sd[p + n + '.bias'], 1e-6)
        h = ln(t, 'norm1')
        if lape:
            pe = ln(pe, 'pe_norm')
            h = h + pe
        q, k, v = F.linear(h, sd[p + 'attn.qkv.weight'], sd[p + 'attn.qkv.bias']).reshape(
            B, L, 3, heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rope(q, k, i)
        q = q * q.shape[-1] ** -0.5
        logits = q @ k.transpose(-2, -1)
        if rpe is not None:
            logits = logits + rpe(q, i)
        a = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
        a = F.linear(a, sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias']) * sd.get(p + 'gamma_1', 1)
        t = t + a
        m = F.linear(F.gelu(F.linear(ln(t, 'norm2'), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'])),
                     sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        t = t + m * sd.get(p + 'gamma_2', 1)
    t = F.layer_norm(t, (D,), sd['norm.weight'], sd['norm.bias'], 1e-6)
    return F.linear(t[:, 0], sd['head.weight'], sd['head.bias'])


def piecewise(x, alpha, beta, gamma):
    """iRPE's g(x), as Cream's ``piecewise_index`` (the far part capped at int(beta))."""
    far = torch.sign(x) * (alpha + torch.log(x.abs().clamp(min=1e-9) / alpha) / math.log(gamma / alpha)
                           * (beta - alpha)).round().clamp(max=int(beta))
    return torch.where(x.abs() <= alpha, x.round(), far).long()


def cream_product_buckets(ratio=1.9):
    """(1 + N, 1 + N) bucket ids of Cream's product method with one skip token (the last bucket)."""
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    b = int(beta)
    axis = torch.arange(float(GRID))
    pos = torch.stack(torch.meshgrid(axis, axis, indexing='ij'), -1).reshape(-1, 2)
    diff = pos[:, None] - pos[None]  # query - key, (row, col)
    r, c = (piecewise(diff[..., a], alpha, beta, gamma) + b for a in (0, 1))
    ids = r * (2 * b + 1) + c
    out = torch.full((GRID * GRID + 1,) * 2, (2 * b + 1) ** 2)
    out[1:, 1:] = ids
    return out


def test_every_tag_names_one_converter_and_the_tagged_models_exist():
    tagged = [n for n in timm.list_models('vitpe_*', include_tags=True) if '.' in n]
    assert sorted({n.split('.')[1] for n in tagged}) == sorted(SOURCES) == ['cream', 'lape', 'ropevit']
    assert {'vitpe_small_patch16_irpe_ape_224.cream', 'vitpe_base_patch16_rope_mixed_ape_224.ropevit'} <= set(tagged)
    assert len(tagged) == 3 + 3 + 8
    assert timm.create_model('vitpe_tiny_patch16_lape_224.lape', depth=1).pretrained_cfg['tag'] == 'lape'


def test_cream_irpe_deit_loads_and_computes_as_the_authors_model(tmp_path):
    depth, heads, d = 2, 3, 64
    sd = trunk(192, depth)
    sd['pos_embed'] = torch.randn(1, 1 + GRID * GRID, 192) * .02
    for i in range(depth):
        sd[f'blocks.{i}.attn.rpe_k.lookup_table_weight'] = torch.randn(1, d, 50) * 3  # (1, head_dim, 49 + skip)
    model = load(tmp_path, 'vitpe_tiny_patch16_irpe_ape_224.cream', sd, depth=depth)
    pe = model.pos_enc
    for i in range(depth):
        torch.testing.assert_close(pe.k_table[i, 0], sd[f'blocks.{i}.attn.rpe_k.lookup_table_weight'], rtol=0, atol=0)
    torch.testing.assert_close(pe.table.prefix, sd['pos_embed'][:, :1], rtol=0, atol=0)
    torch.testing.assert_close(pe.table.weight.reshape(1, -1, 192), sd['pos_embed'][:, 1:], rtol=0, atol=0)
    ids = cream_product_buckets()

    def rpe_k(q, i):  # Cream: q (scaled) against every bucket, gathered per pair
        per_bucket = q @ sd[f'blocks.{i}.attn.rpe_k.lookup_table_weight']
        return per_bucket.gather(-1, ids.expand(*q.shape[:2], *ids.shape))
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(sd, x, heads, depth, pe_first=True, rpe=rpe_k),
                                   rtol=1e-4, atol=1e-4)
        plain = reference(sd, x, heads, depth, pe_first=True)
        assert (model(x) - plain).abs().max() > 2e-3  # 20 x the tolerance: the RPE matters, the check is not vacuous


def test_cream_tables_on_q_k_v_and_cross_land_where_the_mapping_says(tmp_path):
    depth, d = 2, 64
    sd = trunk(192, depth)
    sd['pos_embed'] = torch.randn(1, 1 + GRID * GRID, 192)
    buckets = 2 * 3 + 1 + 1  # cross: 2 int(beta) + 1 per axis, + skip
    for i in range(depth):
        for axis in ('rp_rows', 'rp_cols'):
            for target, shape in (('q', (3, d, buckets)), ('k', (3, d, buckets)), ('v', (3, buckets, d))):
                sd[f'blocks.{i}.attn.rpe_{target}.{axis}.lookup_table_weight'] = torch.randn(shape)
    model = load(tmp_path, 'vitpe_tiny_patch16_irpe_ape_224.cream', sd, depth=depth,
                 pos_enc_args=dict(on='qkv', method='cross', shared_head=False))
    for i in range(depth):
        for a, axis in enumerate(('rp_rows', 'rp_cols')):
            for t in 'qkv':
                torch.testing.assert_close(getattr(model.pos_enc, f'{t}_table')[i, a],
                                           sd[f'blocks.{i}.attn.rpe_{t}.{axis}.lookup_table_weight'], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"iRPE tables on 'q' but the model's iRPE acts on on='k'"):
        load(tmp_path, 'vitpe_tiny_patch16_irpe_ape_224.cream', sd, depth=depth,
             pos_enc_args=dict(method='cross', shared_head=False))
    with pytest.raises(ValueError, match=r"have shape \(3, 64, 8\) per block \(heads, ...\); expected \(1, 64, 8\)"):
        load(tmp_path, 'vitpe_tiny_patch16_irpe_ape_224.cream', sd, depth=depth,
             pos_enc_args=dict(on='qkv', method='cross'))


def test_lape_loads_and_computes_as_the_authors_model(tmp_path):
    depth, heads = 2, 3
    sd = trunk(192, depth)
    sd['pos_embed'] = torch.randn(1, 1 + GRID * GRID, 192) * .5
    for i in range(depth):
        sd[f'blocks.{i}.pe_norm.weight'] = 1 + .3 * torch.randn(192)
        sd[f'blocks.{i}.pe_norm.bias'] = .3 * torch.randn(192)
    model = load(tmp_path, 'vitpe_tiny_patch16_lape_224.lape', sd, depth=depth)
    torch.testing.assert_close(model.pos_enc.norms[1].bias, sd['blocks.1.pe_norm.bias'], rtol=0, atol=0)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(sd, x, heads, depth, lape=True), rtol=1e-4, atol=1e-4)
        assert (model(x) - reference(sd, x, heads, depth)).abs().max() > 2e-3  # without the PE: far off
    sd = {k: v for k, v in sd.items() if '.pe_norm.' not in k}
    with pytest.raises(ValueError, match=r"no 'blocks.<i>.pe_norm.\*' entries; not a LaPE"):
        load(tmp_path, 'vitpe_tiny_patch16_lape_224.lape', sd, depth=depth)


def rotate(x, angles):
    """RoPE-ViT's apply_rotary_emb on patch tokens: interleaved pairs times exp(i angle); class token kept."""
    xc = torch.view_as_complex(x[:, :, 1:].float().reshape(*x.shape[:2], -1, x.shape[-1] // 2, 2))
    out = torch.view_as_real(xc * torch.polar(torch.ones_like(angles), angles)).flatten(3)
    return torch.cat([x[:, :, :1], out], 2)


def grid_t():
    t = torch.arange(GRID * GRID, dtype=torch.float32)
    return t % GRID, torch.div(t, GRID, rounding_mode='floor')  # x (column), y (row)


@pytest.mark.parametrize('name', ['vitpe_small_patch16_rope_mixed_ape_224', 'vitpe_small_patch16_rope_axial_224'])
def test_rope_vit_loads_and_computes_as_the_authors_model(tmp_path, name):
    depth, heads, d = 2, 6, 64
    mixed, ape = 'mixed' in name, name.endswith('_ape_224')
    sd = trunk(384, depth, layer_scale=True)
    t_x, t_y = grid_t()
    if ape:
        sd['pos_embed'] = torch.randn(1, GRID * GRID, 384) * .5
    if mixed:
        sd['freqs'] = torch.randn(2, depth, heads * d // 2) * .3
        sd['freqs_t_x'], sd['freqs_t_y'] = t_x, t_y
    model = load(tmp_path, name + '.ropevit', sd, depth=depth)

    def rope(q, k, i):
        if mixed:  # (2, depth, heads * P) -> angles (heads, N, P)
            ang = (t_x[:, None] * sd['freqs'][0, i] + t_y[:, None] * sd['freqs'][1, i]).view(-1, heads, d // 2)
            ang = ang.permute(1, 0, 2)
        else:
            f = 1. / 100 ** (torch.arange(0, d, 4)[: d // 4].float() / d)
            ang = torch.cat([torch.outer(t_x, f), torch.outer(t_y, f)], -1)
        return rotate(q, ang), rotate(k, ang)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(sd, x, heads, depth, pe_patches=ape, rope=rope),
                                   rtol=1e-4, atol=1e-4)
        assert (model(x) - reference(sd, x, heads, depth, pe_patches=ape)).abs().max() > 2e-3  # RoPE matters
    if mixed:
        torch.testing.assert_close(model.pos_enc.freqs.flatten(2), sd['freqs'], rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"RoPE-ViT checkpoint is RoPE-Mixed \(it has freqs\); the model's "
                                             r"scheme is 'rope_axial'"):
            load(tmp_path, 'vitpe_small_patch16_rope_axial_ape_224.ropevit', sd, depth=depth)
    else:
        sd['pos_embed'] = torch.randn(1, GRID * GRID, 384)
        with pytest.raises(ValueError, match=r"has an absolute position table \(pos_embed\) but this model's "
                                             r"scheme 'rope_axial' was built without one"):
            load(tmp_path, name + '.ropevit', sd, depth=depth)
