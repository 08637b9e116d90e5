"""Checkpoints written before the architecture change keep loading and give the same outputs; moved modules
and renamed options keep their old names (with a DeprecationWarning) for one release."""
import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

import vitpe

FIXTURE = os.path.join(os.path.dirname(__file__), 'data', 'compat_75d2ea8_schemes.pth')
SAVED = torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize('scheme', sorted(SAVED['models']))
def test_checkpoint_of_the_previous_release_loads_and_gives_the_same_outputs(scheme):
    entry = SAVED['models'][scheme]
    model = vitpe.VisionTransformer(**entry['kwargs']).eval()
    result = model.load_state_dict(entry['state_dict'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(model(SAVED['inputs']['32']), entry['out_32'], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(SAVED['inputs']['48x40']), entry['out_48x40'], atol=1e-5, rtol=1e-5)


def test_every_scheme_of_the_previous_release_is_covered():
    assert set(SAVED['models']) <= set(vitpe.list_pos_encodings())
    assert len(SAVED['models']) == 12


@pytest.mark.parametrize('old,names', [
    ('vitpe.pe.absolute', ['AbsolutePE', 'SinCosPE', 'AbsWinPE', 'FourierPE', 'NoPE', 'LearnedTable']),
    ('vitpe.pe.relative', ['DecomposedRelPos', 'decomposed_bias']),
    ('vitpe.pe.conv', ['ConditionalPE', 'LocallyEnhancedPE']),
    ('vitpe.pe.rope', ['RoPEAxial', 'RoPEMixed']),
    ('vitpe.pe.functional', ['coord_grid', 'resample_table', 'irpe_bucket_ids', 'rope_axial_freqs', 'relative_index']),
])
def test_moved_modules_keep_their_old_names(old, names):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace('.', r'\.')):
        mod = importlib.import_module(old)
    for name in names:
        assert callable(getattr(mod, name)), name


def test_renamed_fourier_option_is_an_alias():
    with pytest.warns(DeprecationWarning, match="'groups' is renamed 'feature_sets'"):
        pe = vitpe.create_pos_encoding('fourier', dim=32, num_heads=2, depth=1, grid_size=(4, 4), groups=2)
    assert pe.feature_sets == 2 and pe.freqs.shape[0] == 2


def test_strategy_attributes_of_the_previous_release():
    """Reading the old attributes gives the current context's strategy (deprecated); setting them, which would
    now change nothing, raises with where the strategy went."""
    m = vitpe.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, pos_enc='rope_axial')
    for obj, attr in ((m.pos_enc, 'resolution_strategy'), (m, 'attn_logit_scaling')):
        with pytest.raises(AttributeError, match=r"strategy='pi\+logit'"):
            setattr(obj, attr, True)
    with pytest.warns(DeprecationWarning, match='resolution_strategy is deprecated'):
        assert m.pos_enc.resolution_strategy == 'none'
    with vitpe.use_strategy('ntk+logit'):
        with pytest.warns(DeprecationWarning, match='attn_logit_scaling is deprecated'):
            assert m.attn_logit_scaling is True
        with pytest.warns(DeprecationWarning, match='resolution_strategy is deprecated'):
            assert m.pos_enc.resolution_strategy == 'ntk'
    with pytest.warns(DeprecationWarning, match='renamed position_strategies'):
        assert m.pos_enc.strategies == ('pi', 'ntk', 'yarn')


def test_moved_helpers_keep_their_old_names():
    import vitpe.training as training
    from vitpe.checkpoint import save_checkpoint
    from vitpe.config import build_parser
    with pytest.warns(DeprecationWarning, match='use vitpe.config.build_parser'):
        assert training.build_parser is build_parser
    with pytest.warns(DeprecationWarning, match='use vitpe.checkpoint.save_checkpoint'):
        assert training.atomic_save is save_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # the module warnings are tested above
        from vitpe.pe.absolute import grid_scale
        from vitpe.pe.relative import grid_indices
    pe = vitpe.create_pos_encoding('sincos', dim=16, num_heads=2, depth=1, grid_size=(4, 4))
    with vitpe.use_strategy('pi'):
        assert grid_scale(pe, vitpe.Grid((8, 2))) == (0.5, 2.0)
    assert grid_scale(pe, vitpe.Grid((8, 2))) is None
    coords, rel = grid_indices((2, 3))
    assert coords.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]] and rel[1].tolist()[0] == [2, 1, 0]
    from vitpe.pe.base import create_pos_encoding, register_pos_encoding  # noqa: F401  (old import path)


LEGACY_SCHEME = """
import warnings, torch, vitpe
from vitpe.pe import PositionalEncoding, register_pos_encoding
from vitpe.pe.common import add_to_patches, sincos_embed

class OldSinCos(PositionalEncoding):
    name = 'old_sincos_0_1'
    strategies = ('pi',)

    def prepare(self, grid):
        return {'pos': sincos_embed(grid.shape, self.dim)[None]}

    def tokens(self, x, ctx):
        return add_to_patches(x, ctx.state['pos'], ctx.grid.num_prefix)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    register_pos_encoding(OldSinCos)
assert any('follows the 0.1.0 contract' in str(w.message) for w in caught), caught
assert OldSinCos.hooks == {'tokens'} and OldSinCos.position_strategies == ('pi',)
kw = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
new = vitpe.VisionTransformer(pos_enc='sincos', **kw)
old = vitpe.VisionTransformer(pos_enc='old_sincos_0_1', **kw)
old.load_state_dict({k: v for k, v in new.state_dict().items() if k != 'pos_enc.scheme'})
x = torch.randn(1, 3, 48, 32)
with torch.no_grad():
    torch.testing.assert_close(old(x), new(x))
print('legacy ok')
"""


def test_a_scheme_written_for_the_previous_release_still_registers_and_runs():
    """0.1.0's contract: hooks found from overrides, ``strategies``, ``prepare(grid) -> dict``. In its own process,
    so the scheme it registers does not reach the other tests' registry (``schemes: all``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, '-c', LEGACY_SCHEME], env=dict(os.environ, PYTHONPATH=root),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'legacy ok' in proc.stdout, proc.stderr[-3000:]
