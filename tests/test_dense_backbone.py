"""vitpe.dense backbone: the simple feature pyramid's shapes for every scheme at non-square sizes, classification
checkpoints of any scheme and training size, and the options' errors."""
import pytest
import timm
import torch

import vitpe
from vitpe.checkpoint import save_weights
from vitpe.dense import SimpleFeaturePyramid, ViTBackbone, build_backbone, vitdet_global_blocks
from vitpe.errors import CheckpointError

SCHEMES = vitpe.list_pos_encodings()


def micro_backbone(scheme, **kw):
    kw = dict(dict(window_size=3, global_blocks=(1, 3), out_channels=32, strides=(4, 8, 16, 32, 64)), **kw)
    return build_backbone(f'vitpe_micro_patch16_{scheme}_64', **kw).eval()


@pytest.mark.parametrize('scheme', SCHEMES)
def test_pyramid_shapes_at_non_square_sizes(scheme):
    torch.manual_seed(0)
    model = micro_backbone(scheme)
    with torch.no_grad():
        for (h, w) in ((96, 160), (80, 112)):  # grids 6 x 10 (the window divides it) and 5 x 7 (padded)
            out = model(torch.randn(2, 3, h, w))
            gh, gw = h // 16, w // 16
            want = {'0': (4 * gh, 4 * gw), '1': (2 * gh, 2 * gw), '2': (gh, gw), '3': (gh // 2, gw // 2),
                    'pool': ((gh // 2 + 1) // 2, (gw // 2 + 1) // 2)}
            assert {k: tuple(v.shape[2:]) for k, v in out.items()} == want
            assert all(v.shape[:2] == (2, 32) and v.isfinite().all() for v in out.values())
    assert model.out_channels == 32 and model.strides == (4, 8, 16, 32, 64)


@pytest.mark.parametrize('scheme', SCHEMES)
def test_loads_a_classification_checkpoint_of_any_training_size(scheme, tmp_path):
    """A classifier trained at 64 px: the backbone at its size and without windows gives the classifier's block
    features; a backbone at 96 px with windows loads the same file (tables resized) and runs."""
    torch.manual_seed(0)
    clf = timm.create_model(f'vitpe_micro_patch16_{scheme}_64', num_classes=5).eval()
    with torch.no_grad():
        for p in clf.pos_enc.parameters():
            p.normal_(0, 0.1)
    path = str(tmp_path / 'clf.safetensors')
    save_weights(clf.state_dict(), path)
    x = torch.randn(1, 3, 64, 96)
    plain = ViTBackbone(f'vitpe_micro_patch16_{scheme}_64', window_size=None, checkpoint=path).eval()
    with torch.no_grad():
        want = clf.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
        torch.testing.assert_close(plain(x)[0], want, rtol=0, atol=0)
    big = micro_backbone(scheme, img_size=96, checkpoint=path, window_size=4)  # abswin's table: 4
    assert big.vit.trunk.patch_embed.grid_size == (6, 6)
    with torch.no_grad():
        assert big(torch.randn(1, 3, 96, 128))['0'].shape == (1, 32, 24, 32)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    path = str(tmp_path / 'tiny.safetensors')
    save_weights(timm.create_model('vitpe_micro_patch16_ape_64', depth=2).state_dict(), path)
    with pytest.raises(CheckpointError, match='missing'):
        ViTBackbone('vitpe_micro_patch16_ape_64', checkpoint=path)
    with pytest.raises(ValueError, match="trained with positional scheme 'ape'"):
        ViTBackbone('vitpe_micro_patch16_rope_mixed_64', checkpoint=path)


def test_chosen_blocks_and_norms():
    """Each level from its own block (finest from the first), and every norm option."""
    torch.manual_seed(0)
    model = micro_backbone('ape', out_indices=(0, 1, 2, 3), strides=(4, 8, 16, 32), norm='gn')
    assert model.vit.out_indices == (0, 1, 2, 3) and model.pyramid.num_inputs == 4
    assert [k for k in model(torch.randn(1, 3, 64, 64))] == ['0', '1', '2', '3']
    for norm in ('ln', 'bn', 'none'):
        out = micro_backbone('ape', norm=norm, strides=(8, 16))(torch.randn(2, 3, 64, 96))
        assert [tuple(v.shape) for v in out.values()] == [(2, 32, 8, 12), (2, 32, 4, 6)]


def test_vitdet_defaults():
    assert vitdet_global_blocks(12) == (2, 5, 8, 11) and vitdet_global_blocks(24) == (5, 11, 17, 23)
    model = ViTBackbone('vitpe_tiny_patch16_ape_224')
    assert model.trunk.window_size == (14, 14) and model.trunk.global_blocks == (2, 5, 8, 11)
    assert model.out_indices == (11,) and model.trunk.blocks[1].drop_path1.drop_prob > 0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match='invalid strides'):
        SimpleFeaturePyramid(128, strides=(8, 4))
    with pytest.raises(ValueError, match='invalid strides'):
        SimpleFeaturePyramid(128, strides=(2, 4))
    with pytest.raises(ValueError, match='pools the stride-32'):
        SimpleFeaturePyramid(128, strides=(8, 16, 64))
    with pytest.raises(ValueError, match='multiple of 32'):
        SimpleFeaturePyramid(128, 48, norm='gn')
    with pytest.raises(ValueError, match='invalid norm'):
        SimpleFeaturePyramid(128, norm='layer')
    with pytest.raises(ValueError, match='unknown backbone'):
        ViTBackbone('resnet50')
    with pytest.raises(ValueError, match='invalid out index'):
        ViTBackbone('vitpe_micro_patch16_ape_64', out_indices=(4,))
