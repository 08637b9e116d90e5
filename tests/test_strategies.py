"""The training-free strategies change what they claim to change, and nothing when they do not apply."""
import math

import pytest
import timm
import torch

from vitpe.eval import applicable_strategies, apply_strategy
from vitpe.pe import Grid


def tiny(scheme, **kw):
    return timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, img_size=64, patch_size=8, depth=2,
                             num_classes=4, **kw).eval()


def test_position_interpolation_maps_test_coordinates_into_the_training_range():
    m = tiny('rope_axial')  # trained grid 8 x 8
    grid = Grid((16, 12), 1)
    assert m.pos_enc.coords(grid).max() == 15
    with apply_strategy(m, 'pi'):
        coords = m.pos_enc.coords(grid)
        assert coords[:, 0].max() == pytest.approx(15 * 8 / 16) and coords[:, 1].max() == pytest.approx(11 * 8 / 12)
        assert coords.max() < 8
    assert m.pos_enc.coords(grid).max() == 15  # restored


def test_ntk_lowers_frequencies_and_keeps_the_highest():
    m = tiny('rope_axial')
    pe = m.pos_enc
    grid = Grid((16, 16), 1)
    base = pe.scale_freqs(pe.freqs, grid)
    torch.testing.assert_close(base, pe.freqs)
    with apply_strategy(m, 'ntk'):
        ntk = pe.scale_freqs(pe.freqs, grid)
    d = 2 * len(pe.freqs)
    # theta' = theta * s^(d/(d-2)): frequency k of n becomes theta'^(-k/n)
    n = len(pe.freqs)
    expected = (pe.theta * 2 ** (d / (d - 2))) ** (-torch.arange(n) / n)
    torch.testing.assert_close(ntk, expected)
    assert ntk[0] == pe.freqs[0] and (ntk[1:] < pe.freqs[1:]).all()
    # at or below the training grid nothing changes
    with apply_strategy(m, 'ntk'):
        torch.testing.assert_close(pe.scale_freqs(pe.freqs, Grid((8, 8), 1)), pe.freqs)


def test_yarn_keeps_fast_frequencies_and_interpolates_slow_ones():
    m = tiny('rope_mixed')
    pe = m.pos_enc
    f = torch.tensor([4.0, 1.0, 0.05])  # rotations over 8 tokens: 5.1, 1.27, 0.06
    with apply_strategy(m, 'yarn'):
        out = pe.scale_freqs(f, Grid((16, 16), 1))
        state = pe.prepare(Grid((16, 16), 1))
    assert out[0] == f[0] and out[2] == pytest.approx(f[2] / 2)
    assert f[1] / 2 < out[1] < f[1]
    assert state['logit_scale'] == pytest.approx((0.1 * math.log(2) + 1) ** 2)


def test_logit_scaling_multiplies_the_attention_scale():
    m = tiny('none')
    x = torch.randn(1, 3, 128, 128)
    with apply_strategy(m, 'logit'):
        _, ctx = m.embed(x)
    assert ctx.logit_scale == pytest.approx(math.log(256) / math.log(64))
    _, ctx = m.embed(x)
    assert ctx.logit_scale == 1.0


def test_table_interpolation_strategies():
    m = tiny('ape')
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = m(x)
        with apply_strategy(m, 'nearest'):
            near = m(x)
            table = m.pos_enc.table.at(m.pos_enc, (12, 12)).reshape(12, 12, -1)
        torch.testing.assert_close(m(x), ref)
    assert not torch.allclose(near, ref)
    w = m.pos_enc.table.weight[0]
    torch.testing.assert_close(table[0, 0], w[0, 0])
    torch.testing.assert_close(table[11, 11], w[7, 7])


def test_applicable_strategies_per_scheme():
    assert applicable_strategies(tiny('rope_mixed')) == ['none', 'pi', 'ntk', 'yarn', 'logit']
    assert applicable_strategies(tiny('rope_axial', pos_enc_args=dict(ape=True)))[-3:] == ['bicubic', 'bilinear',
                                                                                            'nearest']
    assert applicable_strategies(tiny('irpe')) == ['none', 'logit']
    with pytest.raises(ValueError, match="strategy 'ntk' does not apply to scheme 'ape'"):
        with apply_strategy(tiny('ape'), 'ntk'):
            pass
    with pytest.raises(ValueError, match="unknown resolution strategy 'zoom'"):
        with apply_strategy(tiny('ape'), 'zoom'):
            pass
