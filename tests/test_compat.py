"""Checkpoints written before the architecture change keep loading and give the same outputs; moved modules
and renamed options keep their old names (with a DeprecationWarning) for one release."""
import importlib
import os
import sys

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


def test_strategy_attributes_of_the_previous_release_say_where_the_strategy_went():
    """Flipping the old attributes would now do nothing; they raise instead of failing silently."""
    m = vitpe.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, pos_enc='rope_axial')
    for obj, attr in ((m.pos_enc, 'resolution_strategy'), (m, 'attn_logit_scaling')):
        with pytest.raises(AttributeError, match=r"strategy='pi\+logit'"):
            setattr(obj, attr, True)
    with pytest.warns(DeprecationWarning, match='renamed position_strategies'):
        assert m.pos_enc.strategies == ('pi', 'ntk', 'yarn')
    from vitpe.pe.base import create_pos_encoding, register_pos_encoding  # noqa: F401  (old import path)
