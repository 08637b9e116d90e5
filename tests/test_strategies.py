"""The training-free strategies change what they claim to change, combine, travel with the forward (never
stored on the model), and are refused where they do not apply."""
import math
import threading

import pytest
import timm
import torch

from vitpe.eval import applicable_strategies, apply_strategy
from vitpe.pe import Grid, ResolutionStrategy, use_strategy
from vitpe.pe.common import grid_coords
from vitpe.pe.strategy import attention_logit_scale


def tiny(scheme, **kw):
    return timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, img_size=64, patch_size=8, depth=2,
                             num_classes=4, **kw).eval()


def S(name):
    return ResolutionStrategy.parse(name)


def test_parse_names_and_combinations():
    assert S('pi+logit') == ResolutionStrategy('pi', True, None) and S('pi+logit').name == 'pi+logit'
    assert S('nearest+yarn').parts == ('yarn', 'nearest') and S('none').parts == () and S(None).name == 'none'
    for bad, message in [('pi+ntk', 'cannot be combined'), ('bicubic+nearest', 'cannot be combined'),
                         ('none+logit', 'cannot be combined'), ('logit+logit', 'cannot be combined'),
                         ('zoom', "unknown resolution strategy 'zoom'"), ('', 'invalid resolution strategy')]:
        with pytest.raises(ValueError, match=message):
            S(bad)


def test_position_interpolation_maps_test_coordinates_into_the_training_range():
    pe = tiny('rope_axial').pos_enc  # trained grid 8 x 8
    assert grid_coords(pe, (16, 12), S('none'), 'cpu').max() == 15
    coords = grid_coords(pe, (16, 12), S('pi+logit'), 'cpu')
    assert coords[:, 0].max() == pytest.approx(15 * 8 / 16) and coords[:, 1].max() == pytest.approx(11 * 8 / 12)
    assert coords.max() < 8


def test_ntk_lowers_frequencies_and_keeps_the_highest():
    pe = tiny('rope_axial').pos_enc
    axis = pe.pair_axis[pe.pair_axis == 1]
    freqs = pe.freqs[pe.pair_axis == 1]  # the column's ladder (the row's is the same)
    grid = Grid((16, 16), 1)
    torch.testing.assert_close(pe.scale_freqs(freqs, grid), freqs)
    ntk = pe.scale_freqs(freqs, grid, S('ntk'), axis)
    d = 2 * len(freqs)
    # theta' = theta * s^(d/(d-2)): frequency k of n becomes theta'^(-k/n)
    n = len(freqs)
    expected = (pe.theta * 2 ** (d / (d - 2))) ** (-torch.arange(n) / n)
    torch.testing.assert_close(ntk, expected)
    assert ntk[0] == freqs[0] and (ntk[1:] < freqs[1:]).all()
    torch.testing.assert_close(pe.scale_freqs(freqs, Grid((8, 8), 1), S('ntk'), axis), freqs)  # at the training grid


def test_yarn_keeps_fast_frequencies_and_interpolates_slow_ones():
    pe = tiny('rope_mixed').pos_enc
    f = torch.tensor([4.0, 1.0, 0.05])  # rotations over 8 tokens: 5.1, 1.27, 0.06
    out = pe.scale_freqs(f, Grid((16, 16), 1), S('yarn'))
    assert out[0] == f[0] and out[2] == pytest.approx(f[2] / 2)
    assert f[1] / 2 < out[1] < f[1]
    yarn_t = (0.1 * math.log(2) + 1) ** 2
    assert attention_logit_scale(pe, Grid((16, 16), 1), S('yarn')) == pytest.approx(yarn_t)
    # one temperature path: YaRN's temperature and log-length scaling multiply
    both = attention_logit_scale(pe, Grid((16, 16), 1), S('yarn+logit'))
    assert both == pytest.approx(yarn_t * math.log(256) / math.log(64))


def test_logit_scaling_multiplies_the_attention_scale():
    m = tiny('none')
    x = torch.randn(1, 3, 128, 128)
    _, ctx = m.embed(x, 'logit')
    assert ctx.logit_scale == pytest.approx(math.log(256) / math.log(64)) and ctx.strategy == S('logit')
    with apply_strategy(m, 'logit'):
        assert m.embed(x)[1].logit_scale == pytest.approx(math.log(256) / math.log(64))
    assert m.embed(x)[1].logit_scale == 1.0


def test_table_interpolation_strategies():
    m = tiny('ape')
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = m(x)
        near = m(x, strategy='nearest')
        with apply_strategy(m, 'nearest'):
            torch.testing.assert_close(m(x), near)
        torch.testing.assert_close(m(x), ref)
    assert not torch.allclose(near, ref)
    table = m.pos_enc.table.at(m.pos_enc, (12, 12), S('nearest')).reshape(12, 12, -1)
    w = m.pos_enc.table.weight[0]
    torch.testing.assert_close(table[0, 0], w[0, 0])
    torch.testing.assert_close(table[11, 11], w[7, 7])


def test_combined_strategy_is_the_composition():
    """pi+logit: the coordinates of pi and the logit scale of logit, in one forward."""
    m = tiny('rope_axial')
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        both = m(x, strategy='pi+logit')
        pi, logit = m(x, strategy='pi'), m(x, strategy='logit')
    _, ctx = m.embed(x, 'pi+logit')
    assert ctx.logit_scale == pytest.approx(math.log(16 * 12) / math.log(64))
    assert not torch.allclose(both, pi) and not torch.allclose(both, logit)
    state_pi = m.pos_enc.prepare(Grid((16, 12), 1), S('pi'))
    torch.testing.assert_close(ctx.state.rot, state_pi.rot)


def test_one_model_under_several_strategies_at_once():
    """The strategy is per forward (per thread in a context): threads evaluating one model under different
    strategies get each their own answer, and the model holds no strategy state."""
    m = tiny('rope_axial')  # its rotation is cached per grid and strategy
    x = torch.randn(2, 3, 128, 128)
    names = ['none', 'pi', 'ntk', 'yarn+logit']
    with torch.no_grad():
        expected = {s: m(x, strategy=s) for s in names}
    got = {}

    def work(name):
        with use_strategy(name), torch.no_grad():
            for _ in range(3):
                got[name] = m(x)
    threads = [threading.Thread(target=work, args=(s,)) for s in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in names:
        torch.testing.assert_close(got[s], expected[s], msg=s)
    assert len({round(float(v.sum()), 4) for v in expected.values()}) == len(names)


def test_applicable_strategies_per_scheme():
    assert applicable_strategies(tiny('rope_mixed')) == ['none', 'pi', 'ntk', 'yarn', 'logit']
    assert applicable_strategies(tiny('rope_axial', pos_enc_args=dict(ape=True)))[-3:] == ['bicubic', 'bilinear',
                                                                                            'nearest']
    assert applicable_strategies(tiny('irpe')) == ['none', 'logit']
    assert applicable_strategies(tiny('abswin'))[-3:] == ['bicubic', 'bilinear', 'nearest']
    with pytest.raises(ValueError, match="strategy 'ntk' does not apply to scheme 'ape'"):
        with apply_strategy(tiny('ape'), 'ntk'):
            pass
    with pytest.raises(ValueError, match="strategy 'pi' does not apply to scheme 'irpe'"):
        tiny('irpe')(torch.randn(1, 3, 64, 64), strategy='pi+logit')
    with pytest.raises(ValueError, match="unknown resolution strategy 'zoom'"):
        with apply_strategy(tiny('ape'), 'zoom'):
            pass
