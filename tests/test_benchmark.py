"""The benchmark's smoke mode and schema, torch.compile against eager for every scheme, and the memory
bound of bias schemes on a large grid (process peak memory in fresh processes, not timed)."""
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch

import vitpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_KEYS = {'scheme', 'model', 'img_size', 'batch', 'mode', 'device', 'imgs_per_s', 'peak_mem_mb', 'ref',
               'ref_imgs_per_s', 'ratio', 'attention_path'}


def test_benchmark_smoke_writes_the_schema(tmp_path):
    out = tmp_path / 'bench.json'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'bench_pe.py'), '--smoke',
                           '--output', str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    records = data['records']
    assert {(r['scheme'], r['ref']) for r in records} == {('ape', 'none'), ('ape', 'timm'), ('irpe', 'none'),
                                                          ('abswin', 'none'), ('abswin', 'timm')}
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert r['mode'] in ('infer', 'train') and r['ref'] in ('none', 'timm')
        assert r['imgs_per_s'] > 0 and r['ratio'] == pytest.approx(r['imgs_per_s'] / r['ref_imgs_per_s'])
        assert r['batch'] == (1 if r['img_size'] == 96 else 2)
    assert '| ape | tiny | 64 | 2 | infer |' in proc.stdout
    assert data['growth']['ape']['sizes'] == [64, 96] and not math.isnan(data['growth']['ape']['time_exp'])


def test_benchmark_with_window_attention(tmp_path):
    """--window: every model (the bare trunk too) with ViTDet's window blocks; no timm reference (none has windows)."""
    out = tmp_path / 'bench.json'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'bench_pe.py'), '--smoke', '--window', '2',
                           '--output', str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())['records']
    assert {(r['scheme'], r['ref'], r['img_size']) for r in records} == {
        (s, 'none', img) for s in ('ape', 'irpe', 'abswin') for img in (64, 96)}
    assert all(r['window'] == 2 and '/' in r['attention_path'] for r in records)
    assert '| irpe | tiny w2 | 96 | 1 | infer |' in proc.stdout


def test_benchmark_with_the_flex_backend(tmp_path):
    """--attention-backend flex: the vitpe models attend through FlexAttention (an eager reference on the CPU),
    and the record says the forwards took that path."""
    out = tmp_path / 'bench.json'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'bench_pe.py'), '--models', 'tiny',
                           '--sizes', '64', '--large-sizes', '--modes', 'infer', '--schemes', 'alibi', '--no-timm',
                           '--repeats', '1', '--batch', '2', '--attention-backend', 'flex', '--output', str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())['records']
    assert [(r['scheme'], r['ref'], r['attention_backend'], r['attention_path']) for r in records] == [
        ('alibi', 'none', 'flex', 'flex')]  # the path the measured forwards took


@pytest.mark.parametrize('scheme', vitpe.list_pos_encodings())
def test_compiled_matches_eager(scheme):
    torch._dynamo.reset()
    m = timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, depth=1, embed_dim=64, num_heads=2,
                          patch_size=8, img_size=32, num_classes=3).eval()
    with torch.no_grad():
        for p in m.pos_enc.parameters():
            p.normal_(0, 0.1)
    compiled = torch.compile(m, dynamic=False)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-4, rtol=1e-4)


def peak(scheme, img=1024):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'peak_memory.py'), '--scheme', scheme,
                           '--img-size', str(img), '--depth', '2'], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bias_schemes_stay_within_1_5x_of_the_bare_trunk_at_1024():
    bare = peak('none')
    assert bare['attention_path'] == 'fused'
    for scheme in ('decomposed', 'irpe', 'fire'):  # fire: the offset-bias path of alibi, kerple and lookhere too
        rec = peak(scheme)
        assert rec['attention_path'] == 'chunked'
        assert rec['peak_rise_mb'] <= 1.5 * bare['peak_rise_mb'], (scheme, rec, bare)


# ------------------------------------------------------------------ contextual iRPE against gather-then-matmul
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import bench_irpe  # noqa: E402


@pytest.mark.parametrize('grid_shape', [(5, 5), (2, 3, 3)])
@pytest.mark.parametrize('method,shared_head', [('product', True), ('cross', False), ('euclidean', True)])
@pytest.mark.parametrize('on', ['k', 'v'])
def test_irpe_paths_match_the_gather_then_matmul_formulation(on, method, shared_head, grid_shape):
    pe, ctx, q, k, v, attn = bench_irpe.setup(on, grid_shape, batch=2, heads=3, head_dim=8, method=method,
                                              shared_head=shared_head)
    paths = bench_irpe.steps(on, pe, ctx, q, k, v, attn)
    n = ctx.grid.num_tokens
    for name in ('per_bucket', 'per_pair'):
        assert paths[name]().shape == ((2, 3, n, n) if on == 'k' else (2, 3, n, 8))
        torch.testing.assert_close(paths[name](), paths['naive'](), atol=1e-5, rtol=1e-5)
    assert 'pair_gather' not in vars(pe)  # the forced path is undone


def test_irpe_takes_the_per_pair_path_where_the_grid_has_a_quarter_as_many_tokens_as_buckets():
    for grid_shape, method, pairs in [((4, 2, 2), 'product', True), ((4, 4, 4), 'product', True),  # 343 buckets
                                      ((2, 7, 7), 'product', False), ((8, 14, 14), 'product', False),
                                      ((2, 3), 'product', True), ((4, 4), 'product', False),  # 49 buckets
                                      ((4, 2, 2), 'cross', False)]:  # cross: 7 buckets per axis table
        pe, ctx, *_ = bench_irpe.setup('k', grid_shape, batch=1, heads=2, head_dim=4, method=method)
        assert pe._pairs(ctx.grid) is pairs, (grid_shape, method)
    pe, ctx, *_ = bench_irpe.setup('k', (4, 2, 2), batch=1, heads=2, head_dim=4)
    pe.cache_tokens = 16  # the per-pair gather is kept to grids of cache_tokens or fewer
    assert not pe._pairs(ctx.grid)


def test_irpe_benchmark_smoke(tmp_path):
    out = tmp_path / 'irpe.json'
    assert bench_irpe.main(['--smoke', '--output', str(out)]) == 0
    records = json.loads(out.read_text())
    assert {(r['grid'], r['on']) for r in records} == {(g, on) for g in ('4x4', '2x2x2') for on in 'kv'}
    for r in records:
        assert r['per_bucket_ms'] > 0 and r['per_pair_ms'] > 0
        other = 'per_pair' if r['taken'] == 'per_bucket' else 'per_bucket'
        assert r['other_over_taken'] == pytest.approx(r[f'{other}_ms'] / r[f"{r['taken']}_ms"])
    assert {r['grid']: r['taken'] for r in records} == {'4x4': 'per_bucket', '2x2x2': 'per_pair'}  # 17, 9 tokens


@pytest.mark.parametrize('scheme', vitpe.list_pos_encodings())
def test_sdpa_gets_no_mask_unless_the_scheme_adds_a_bias(scheme, monkeypatch):
    """Schemes without a bias keep SDPA's fused kernels: no attn_mask, path 'fused'."""
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
    m = timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, depth=2, img_size=64, num_classes=0).eval()
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    adds_bias = m.pos_enc.uses('bias')  # declared by the scheme
    if scheme in ('irpe', 'decomposed'):
        assert adds_bias
    if scheme in ('none', 'ape', 'sincos', 'rope_axial', 'rope_mixed', 'cpe', 'lepe'):
        assert not adds_bias
    assert len(masks) == 2 and all((mask is not None) == adds_bias for mask in masks)
    assert m.blocks[0].attn.path_for(m.pos_enc, 1, 17) == ('bias' if adds_bias else 'fused')
