"""The timm contract of every registered vitpe model."""
import pytest
import timm
import torch

import vitpe

MODELS = [n for n in timm.list_models('vitpe_*') if '_video_' not in n]  # video: tests/test_video_models.py
SIZES = [(224, 224), (160, 160), (320, 320), (224, 320)]
SIZES_IMG = {'micro': 64, 'tiny': 224, 'small': 224, 'base': 224}


def test_every_model_is_listed():
    """The zoo is derived from the registry: every zoo entry a scheme declares, at every size it names."""
    assert sorted(MODELS) == [n for n in vitpe.list_models() if '_video_' not in n]
    expected = {f'vitpe_{size}_patch16_{SIZES_IMG[size]}' for size in SIZES_IMG}
    for scheme in vitpe.list_pos_encodings():
        for entry in (e for e in vitpe.pe.get_pos_encoding_class(scheme).zoo if 'image' in e.kinds):
            expected |= {f'vitpe_{size}_patch16_{entry.suffix}_{SIZES_IMG[size]}' for size in entry.sizes}
    assert expected == set(MODELS)
    # the families users and papers name
    for name in ('vitpe_small_patch16_rope_mixed_224', 'vitpe_base_patch16_rope_axial_ape_224',
                 'vitpe_tiny_patch16_irpe_ape_224', 'vitpe_micro_patch16_decomposed_64'):
        assert name in MODELS


@pytest.mark.parametrize('name', MODELS)
def test_model_contract(name, tmp_path):
    model = timm.create_model(name, num_classes=7)
    assert model.pretrained_cfg['fixed_input_size'] is False
    for h, w in SIZES:
        out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 7) and torch.isfinite(out).all(), (h, w)

    # backward reaches every parameter of the scheme (loss over all tokens: with token pooling the last
    # block's patch tokens do not reach the logits)
    model.zero_grad()
    model.forward_features(torch.randn(2, 3, 160, 224)).square().mean().backward()
    unreached = [n for n, p in model.pos_enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unreached, unreached

    # forward_intermediates: NCHW and NLC, any grid
    x = torch.randn(2, 3, 160, 224)
    depth = len(model.blocks)
    final, feats = model.forward_intermediates(x, indices=(depth // 4, depth // 2, depth - 1))
    assert final.shape == (2, 1 + 140, model.embed_dim)
    assert [f.shape for f in feats] == [(2, model.embed_dim, 10, 14)] * 3
    nlc = model.forward_intermediates(x, indices=2, output_fmt='NLC', intermediates_only=True, stop_early=True)
    assert [f.shape for f in nlc] == [(2, 140, model.embed_dim)] * 2

    # a checkpoint at the reference size loads strictly into a model at a larger one
    ckpt = tmp_path / 'ckpt.pth'
    torch.save(model.state_dict(), ckpt)
    big = timm.create_model(name, num_classes=7, img_size=320)
    big.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    assert torch.isfinite(big(torch.randn(1, 3, 320, 320))).all()


@pytest.mark.parametrize('name', ['vitpe_tiny_patch16_ape_224', 'vitpe_tiny_patch16_rope_mixed_224',
                                  'vitpe_tiny_patch16_irpe_224', 'vitpe_tiny_patch16_decomposed_224'])
def test_features_only(name):
    model = timm.create_model(name, features_only=True, out_indices=(3, 7, 11))
    feats = model(torch.randn(2, 3, 224, 288))
    assert [f.shape for f in feats] == [(2, 192, 14, 18)] * 3
    assert model.feature_info.channels() == [192] * 3
    assert model.feature_info.reduction() == [16] * 3


def test_generic_model_takes_scheme_and_options():
    m = timm.create_model('vitpe_tiny_patch16_224', pos_enc='irpe',
                          pos_enc_args=dict(mode='contextual', method='product', on='qkv'))
    assert m.pos_enc.name == 'irpe' and m.pos_enc.on == 'qkv'
    assert m(torch.randn(1, 3, 64, 96)).shape == (1, 1000)


def test_model_api():
    m = timm.create_model('vitpe_small_patch16_rope_mixed_ape_224',
                          num_classes=3)
    assert 'pos_enc.freqs' in m.no_weight_decay() and 'pos_enc.table.weight' in m.no_weight_decay()
    assert m.forward_head(m.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True).shape == (1, 384)
    m.reset_classifier(5, 'avg')
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    m.set_input_size(img_size=(384, 320))
    assert m.pos_enc.table.weight.shape == (1, 24, 20, 384)
    assert m.pretrained_cfg['input_size'] == (3, 384, 320)
    matcher = m.group_matcher()
    assert 'blocks' in matcher and 'stem' in matcher
    kept = m.prune_intermediate_layers(indices=(1, 3))
    assert kept == [1, 3] and len(m.blocks) == 4


def test_registers_and_avg_pool():
    m = timm.create_model('vitpe_tiny_patch16_rope_axial_224', reg_tokens=4, global_pool='avg', num_classes=2)
    assert m.num_prefix_tokens == 5
    _, feats = m.forward_intermediates(torch.randn(1, 3, 96, 64), indices=1, return_prefix_tokens=True)
    spatial, prefix = feats[0]
    assert spatial.shape == (1, 192, 6, 4) and prefix.shape == (1, 5, 192)


@pytest.mark.parametrize('scheme', vitpe.list_pos_encodings())
def test_video_trunk_every_scheme(scheme):
    """The same trunk and schemes over (T, H, W): the grid is a run-time value of any rank."""
    m = vitpe.VisionTransformer(img_size=(4, 64, 64), patch_size=(2, 16, 16), embed_dim=96, depth=2, num_heads=2,
                                num_classes=3, pos_enc=scheme)
    x = torch.randn(2, 3, 6, 48, 80)
    out = m(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    feats = m.forward_intermediates(x, indices=1, intermediates_only=True)
    assert feats[0].shape == (2, 96, 3, 3, 5)
    m.forward_features(x).square().mean().backward()
    assert all(p.grad is not None for p in m.pos_enc.parameters())


@pytest.mark.parametrize('scheme', vitpe.list_pos_encodings())
def test_gradient_checkpointing_gives_the_same_gradients(scheme):
    """set_grad_checkpointing recomputes blocks in the backward pass: the same loss and gradients,
    scheme parameters included."""
    torch.manual_seed(0)
    m = timm.create_model('vitpe_tiny_patch16_224', pos_enc=scheme, depth=2, img_size=64, num_classes=3)
    with torch.no_grad():
        for p in m.pos_enc.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        m.set_grad_checkpointing(ckpt)
        m.zero_grad()
        m(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    learned = any(True for _ in m.pos_enc.parameters())
    assert grads[0].keys() == grads[1].keys() and any(n.startswith('pos_enc.') for n in grads[0]) == learned
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)
