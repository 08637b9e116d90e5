"""Attention diagnostics (vitpe.eval.diagnostics): entropy and mean distance of hand-made maps, the probe on
models (equal to the full maps, chunk by chunk within the memory budget, output unchanged), and the learning
record of a run."""
import json
import math

import pytest
import torch

from helpers import micro
from vitpe.eval import AttentionProbe
from vitpe.eval.diagnostics import attention_sums, diagnostics_from_sums
from vitpe.eval.learning import learning_markdown, learning_record, learning_summary
from vitpe.layers.attention import Attention


def one_map(attn, shape, prefix=0):
    return {k: v[0] for k, v in diagnostics_from_sums({0: attention_sums(attn, shape, prefix)}).items()}


def test_entropy_and_distance_of_hand_made_maps():
    uniform = torch.full((1, 1, 4, 4), 0.25)  # a 2 x 2 grid, every query attends to all four patches
    d = one_map(uniform, (2, 2))
    assert d['entropy'] == pytest.approx(math.log(4)) and d['entropy_norm'] == pytest.approx(1.0)
    assert d['distance'] == pytest.approx((0 + 1 + 1 + math.sqrt(2)) / 4)  # the same from every corner
    self_only = torch.eye(4)[None, None]
    d = one_map(self_only, (2, 2))
    assert d['entropy'] == pytest.approx(0.0, abs=1e-6) and d['distance'] == pytest.approx(0.0)
    # a 1 x 3 grid plus a class token: each patch query puts 0.5 on the class token and 0.5 on the patch two
    # columns away (or on itself, for the middle one); the class token's row counts for the entropy only
    attn = torch.tensor([[0.25, 0.25, 0.25, 0.25],
                         [0.5, 0.0, 0.0, 0.5],
                         [0.5, 0.0, 0.5, 0.0],
                         [0.5, 0.5, 0.0, 0.0]])[None, None]
    d = one_map(attn, (1, 3), prefix=1)
    assert d['entropy'] == pytest.approx((math.log(4) + 3 * math.log(2)) / 4)
    assert d['entropy_norm'] == pytest.approx(d['entropy'] / math.log(4))
    assert d['distance'] == pytest.approx((2 + 0 + 2) / 3)  # the class token's share is left out
    assert one_map(torch.full((1, 1, 8, 8), 1 / 8), (2, 2, 2))['distance'] == pytest.approx(
        (0 + 3 * 1 + 3 * math.sqrt(2) + math.sqrt(3)) / 8)  # 3D grids: distance over (t, h, w)


def full_maps(model, x):
    """Reference: every layer's whole attention map (the chunks the attention computes, put together)."""
    seen = {}

    def observe(attn, ctx, layer, rows):
        seen.setdefault(layer, []).append(attn.clone())
    for m in model.modules():
        if isinstance(m, Attention):
            m.observer = observe
    model(x)
    for m in model.modules():
        if isinstance(m, Attention):
            m.observer = None
    return {layer: torch.cat(chunks, dim=2) for layer, chunks in seen.items()}


@pytest.mark.parametrize('scheme', ['rope_mixed', 'decomposed', 'lepe'])  # lepe: a value hook in row chunks
def test_probe_equals_full_maps_chunk_by_chunk_and_leaves_output(scheme, monkeypatch):
    model = micro(scheme)
    x = torch.randn(3, 3, 80, 64)  # a 5 x 4 grid plus the class token: N = 21
    plain = model(x)
    with AttentionProbe(model) as probe:
        observed = model(x)
    torch.testing.assert_close(observed, plain, rtol=1e-4, atol=1e-5)  # explicit softmax: same output
    assert all(m.observer is None for m in model.modules() if isinstance(m, Attention))
    maps = full_maps(model, x)
    assert set(maps) == set(range(4)) and maps[0].shape == (3, 4, 21, 21)
    expected = diagnostics_from_sums({layer: attention_sums(a, (5, 4), 1) for layer, a in maps.items()})
    for name, values in probe.result().items():
        assert values == pytest.approx(expected[name], rel=1e-5)
    # with a budget of 2 query rows per chunk, no chunk holds more and the result is the same
    chunks = []
    monkeypatch.setattr(Attention, 'bias_budget_mb', 3 * 4 * 21 * 4 * 2 / 2 ** 20)
    with AttentionProbe(model) as chunked:
        for m in chunked.attentions:
            inner = m.observer
            m.observer = lambda attn, *a, inner=inner: (chunks.append(attn.shape), inner(attn, *a))
        model(x)
    assert max(s[2] for s in chunks) == 2 and sum(s[2] for s in chunks) == 4 * 21
    for name, values in chunked.result().items():
        assert values == pytest.approx(expected[name], rel=1e-5)


def test_probe_needs_vitpe_attention():
    with pytest.raises(ValueError, match='no vitpe Attention'):
        AttentionProbe(torch.nn.Linear(2, 2))


def test_learning_record_and_summary(tmp_path):
    logs = []
    for seed, accs in enumerate([(0.3, 0.92, 0.97), (0.25, 0.5, 0.8), (0.9, 0.95, 0.99)]):
        path = tmp_path / f'log{seed}.jsonl'
        path.write_text(''.join(json.dumps({'epoch': e + 1, 'updates': 100 * (e + 1), 'val_acc': a,
                                            'epoch_time_s': 10.0 + seed}) + '\n' for e, a in enumerate(accs)))
        logs.append(learning_record('ape', seed, str(path)))
    assert [(r.final_val_acc, r.updates, r.updates_to_reach, r.train_time_s) for r in logs] == [
        (0.97, 300, 200, 30.0), (0.8, 300, None, 33.0), (0.99, 300, 100, 36.0)]  # time: the epochs' sum
    mean, std, learned, reach = learning_summary(logs)['ape']
    assert mean == pytest.approx((0.97 + 0.8 + 0.99) / 3) and not learned and reach == [200, None, 100]
    assert std == pytest.approx(torch.tensor([0.97, 0.8, 0.99]).std().item())
    assert '| ape | 0.920 ± 0.104 | no | 200, >300, 100 |' in learning_markdown(logs)
    assert learning_summary(logs[::2])['ape'][2]  # seeds 0 and 2: mean 0.98, learned
    with pytest.raises(FileNotFoundError, match='no training log'):
        learning_record('ape', 0, str(tmp_path / 'missing.jsonl'))
