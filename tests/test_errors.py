"""Bad input gets a ValueError that names the value and what was expected."""
import pytest
import timm
import torch

import vitpe


@pytest.fixture(scope='module')
def tiny():
    return timm.create_model('vitpe_tiny_patch16_rope_axial_224')


def test_size_not_divisible_by_patch(tiny):
    with pytest.raises(ValueError, match=r"\(224, 230\).*not divisible.*\(16, 16\)"):
        tiny(torch.randn(1, 3, 224, 230))


def test_wrong_channel_count(tiny):
    with pytest.raises(ValueError, match="expected 3 input channels, got 4"):
        tiny(torch.randn(1, 4, 224, 224))


def test_wrong_rank(tiny):
    with pytest.raises(ValueError, match=r"expected input of shape \(B, C, H, W\)"):
        tiny(torch.randn(1, 3, 2, 224, 224))


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown positional scheme 'rope2d'.*'rope_mixed'"):
        timm.create_model('vitpe_tiny_patch16_224', pos_enc='rope2d')


@pytest.mark.parametrize('scheme,options,message', [
    ('irpe', dict(mode='learned'), r"irpe: invalid mode='learned'; expected one of \['bias', 'contextual'\]"),
    ('irpe', dict(method='manhattan'), "irpe: invalid method='manhattan'"),
    ('irpe', dict(on='x'), "irpe: invalid on='x'"),
    ('irpe', dict(mode='bias', on='qkv'), "invalid on='qkv' with mode='bias'; encodings on values need mode='contextual'"),
    ('irpe', dict(ratio=-1), "irpe: invalid ratio=-1"),
    ('cpe', dict(blocks=(12,)), r"cpe: invalid blocks=\(12,\); expected block indices in \[0, 12\)"),
    ('cpe', dict(kernel_size=4), "cpe: invalid kernel_size=4; expected a positive odd integer"),
    ('lepe', dict(kernel_size=0), "lepe: invalid kernel_size=0"),
    ('lape', dict(base='rope'), "lape: invalid base='rope'"),
    ('rope_mixed', dict(theta=0), "rope_mixed: invalid theta=0"),
    ('abswin', dict(window_size=(3, 0)), r"abswin: invalid window_size=\(3, 0\)"),
    ('fourier', dict(num_features=7), "fourier: invalid num_features=7"),
    ('fourier', dict(feature_sets=5), "fourier: invalid feature_sets=5"),
    ('decomposed', dict(zero_init='yes'), "decomposed: invalid zero_init='yes'"),
    ('ape', dict(interpolation='spline'), "invalid interpolation='spline'"),
    ('ape', dict(colour='red'), r"ape: unknown option\(s\) \['colour'\]"),
])
def test_invalid_scheme_option(scheme, options, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, pos_enc_args=options)


def test_scheme_model_refuses_another_scheme():
    with pytest.raises(ValueError, match="vitpe_tiny_patch16_ape_224 is the 'ape' model; pos_enc='irpe'"):
        timm.create_model('vitpe_tiny_patch16_ape_224', pos_enc='irpe')


def test_bad_trunk_options():
    with pytest.raises(ValueError, match="invalid global_pool='max'"):
        timm.create_model('vitpe_tiny_patch16_224', global_pool='max')
    with pytest.raises(ValueError, match="global_pool='token' needs class_token=True"):
        timm.create_model('vitpe_tiny_patch16_224', class_token=False)
    with pytest.raises(ValueError, match="invalid output_fmt='NHWC'"):
        timm.create_model('vitpe_tiny_patch16_224').forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt='NHWC')


def test_rope_head_dim_must_split_over_axes():
    with pytest.raises(ValueError, match=r"rope_axial: head_dim=18 must be divisible by 4 for a rank-2 grid \(or pass"):
        vitpe.create_pos_encoding("rope_axial", dim=36, num_heads=2, depth=1, grid_size=(4, 4))
    with pytest.raises(ValueError, match=r"rope_mixed: head_dim=20: invalid split=\(2, 4, 5\); expected 3 positive "
                                         r"integers \(frequencies per axis, grid order\) summing to 10"):
        vitpe.create_pos_encoding('rope_mixed', dim=40, num_heads=2, depth=1, grid_size=(2, 4, 4), split=(2, 4, 5))
    with pytest.raises(ValueError, match=r"sincos: dim=4: invalid split=\(1, 0\)"):
        vitpe.create_pos_encoding('sincos', dim=4, num_heads=1, depth=1, grid_size=(4, 4), split=(1, 0))


def test_a_scheme_must_declare_the_hooks_it_overrides():
    from vitpe.pe import PositionalEncoding, register_pos_encoding

    class Undeclared(PositionalEncoding):
        name = 'undeclared_bias'
        hooks = frozenset()

        def bias(self, q, k, ctx, layer, rows=slice(None)):
            return None

    class Unimplemented(PositionalEncoding):
        name = 'unimplemented_tokens'
        hooks = frozenset({'tokens', 'qk'})

        def tokens(self, x, ctx):
            return x

    for cls, message in ((Undeclared, r"hooks declared \[\] but overridden \['bias'\]"),
                         (Unimplemented, r"hooks declared \['qk', 'tokens'\] but overridden \['tokens'\]")):
        with pytest.raises(TypeError, match=message):
            register_pos_encoding(cls)
    assert 'undeclared_bias' not in vitpe.list_pos_encodings()
    with pytest.raises(ValueError, match="registered twice"):
        register_pos_encoding(type('Again', (PositionalEncoding,), {'name': 'ape'}))


def test_a_subclass_of_a_registered_scheme_does_not_take_its_models():
    from vitpe.pe import AbsolutePE, ZooEntry, register_pos_encoding
    owner = timm.create_model('vitpe_micro_patch16_ape_64').pos_enc.name

    class Clash(AbsolutePE):
        name = 'ape_clash'
        zoo = (ZooEntry('ape', sizes=('micro',)),)
    with pytest.raises(ValueError, match=r"zoo models \['vitpe_micro_patch16_ape_64', "
                                         r"'vitpe_micro_patch16_ape_video_8x64'\] are already registered"):
        register_pos_encoding(Clash)
    assert 'ape_clash' not in vitpe.list_pos_encodings() and owner == 'ape'
    assert timm.create_model('vitpe_micro_patch16_ape_64').pos_enc.name == 'ape'
