"""FX: every scheme traces (torchvision's create_feature_extractor, timm's feature_cls='fx') and the traced model
equals eager, at the reference size and at another one (a traced graph has the grid of the model's img_size, as
timm's ViT); the shape checks stay, as one leaf call, and raise clear errors in traced models too."""
import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import vitpe
from helpers import micro

CASES = [(s, {}) for s in vitpe.list_pos_encodings()] + [('irpe', dict(on='qkv', method='cross')),
                                                          ('rope_axial', dict(ape=True))]


@pytest.mark.parametrize('scheme,options', CASES, ids=[f'{s}-{"-".join(o)}' for s, o in CASES])
def test_create_feature_extractor_equals_eager(scheme, options):
    for img in ((64, 64), (48, 80)):  # the reference size, and a model built at another (non-square) size
        m = micro(scheme, pos_enc_args=options, img_size=img)
        fx = create_feature_extractor(m, return_nodes={'blocks.1': 'b1', 'blocks.3': 'b3', 'head': 'logits'})
        x = torch.randn(2, 3, *img)
        with torch.no_grad():
            got = fx(x)
            _, feats = m.forward_intermediates(x, indices=(1, 3), output_fmt='NLC', return_prefix_tokens=True)
            torch.testing.assert_close(got['logits'], m(x), rtol=0, atol=0, msg=str(img))
        for name, (patches, prefix) in zip(('b1', 'b3'), feats):
            torch.testing.assert_close(got[name], torch.cat([prefix, patches], dim=1), rtol=0, atol=0)


@pytest.mark.parametrize('scheme', ['rope_mixed', 'decomposed', 'lape'])
def test_timm_fx_features_equal_the_getter_features(scheme):
    torch.manual_seed(0)
    getter = timm.create_model(f'vitpe_micro_patch16_{scheme}_64', features_only=True, out_indices=(1, 3)).eval()
    torch.manual_seed(0)
    graph = timm.create_model(f'vitpe_micro_patch16_{scheme}_64', features_only=True, feature_cls='fx',
                              out_indices=(1, 3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        nchw = getter(x)
        tokens = graph(x)
    for t, f in zip(tokens, nchw):  # the graph's block outputs are tokens (prefix first)
        torch.testing.assert_close(t[:, 1:].transpose(1, 2).reshape(f.shape), f, rtol=0, atol=0)


def test_video_model_traces():
    torch.manual_seed(0)
    m = vitpe.VisionTransformer(img_size=(4, 32, 32), patch_size=(2, 16, 16), embed_dim=48, depth=2, num_heads=2,
                                num_classes=3, pos_enc='rope_axial').eval()
    fx = create_feature_extractor(m, return_nodes={'head': 'logits'})
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fx(x)['logits'], m(x), rtol=0, atol=0)


def test_traced_models_keep_clear_errors():
    fx = create_feature_extractor(micro('rope_axial'), return_nodes={'head': 'logits'})
    with pytest.raises(ValueError, match=r"FX-traced model takes inputs of size \(64, 64\).*got \(96, 64\)"):
        fx(torch.randn(1, 3, 96, 64))
    with pytest.raises(ValueError, match='expected 3 input channels, got 1'):
        fx(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r'expected input of shape \(B, C, H, W\)'):
        fx(torch.randn(3, 64, 64))
    # eager is unchanged: any size the patch divides
    assert micro('rope_axial')(torch.randn(1, 3, 96, 64)).shape == (1, 3)
