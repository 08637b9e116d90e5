"""Video models: the zoo entries, the timm contract over (T, H, W), one frame equal to the image model, image
checkpoints inflated into video models, and clear errors for bad clips."""
import pytest
import timm
import torch

import vitpe
from vitpe.models.inflate import inflation

from helpers import micro

VIDEO = sorted(timm.list_models('vitpe_*_video_*'))
MICRO_VIDEO = [n for n in VIDEO if n.startswith('vitpe_micro_')]
CLIPS = [(8, 64, 64), (4, 48, 80), (16, 32, 32)]  # (T, H, W): the reference, fewer frames, more frames


def test_video_zoo_is_derived_from_the_registry():
    """Every ZooEntry of kind 'video' gives vitpe_<size>_patch16_<suffix>_video_8x<img> for each of its sizes;
    image models are unchanged; the generic video model takes any scheme."""
    img = {'micro': 64, 'tiny': 224, 'small': 224, 'base': 224}
    expected = {f'vitpe_{size}_patch16_video_8x{img[size]}' for size in img}
    for scheme in vitpe.list_pos_encodings():
        for entry in vitpe.pe.get_pos_encoding_class(scheme).zoo:
            if 'video' in entry.kinds:
                expected |= {f'vitpe_{size}_patch16_{entry.suffix}_video_8x{img[size]}' for size in entry.sizes}
    assert set(VIDEO) == expected
    for name in ('vitpe_tiny_patch16_rope_mixed_video_8x224', 'vitpe_small_patch16_ape_sep_video_8x224',
                 'vitpe_base_patch16_irpe_video_8x224', 'vitpe_micro_patch16_decomposed_video_8x64'):
        assert name in VIDEO
    assert 'vitpe_micro_patch16_ape_sep_64' not in timm.list_models('vitpe_*')  # separable APE is video only
    args = vitpe.ZOO['vitpe_tiny_patch16_rope_mixed_video_8x224']
    assert (args['num_frames'], args['patch_size'], args['img_size'], args['embed_dim']) == (8, (2, 16, 16), 224, 192)


@pytest.mark.parametrize('name', MICRO_VIDEO)
def test_video_model_contract(name, tmp_path):
    model = timm.create_model(name, num_classes=5)
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, 64, 64) and cfg['num_frames'] == 8 and cfg['clip_size'] == (3, 8, 64, 64)
    assert model.pos_enc.grid_size == (4, 4, 4)
    for t, h, w in CLIPS:
        out = model(torch.randn(2, 3, t, h, w))
        assert out.shape == (2, 5) and torch.isfinite(out).all(), (t, h, w)
    model.zero_grad()
    model.forward_features(torch.randn(2, 3, 6, 48, 64)).square().mean().backward()
    unreached = [n for n, p in model.pos_enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unreached, unreached

    x = torch.randn(2, 3, 6, 48, 80)
    final, feats = model.forward_intermediates(x, indices=(1, 3))
    assert final.shape == (2, 1 + 3 * 3 * 5, 128) and [f.shape for f in feats] == [(2, 128, 3, 3, 5)] * 2
    nlc = model.forward_intermediates(x, indices=1, output_fmt='NLC', intermediates_only=True)
    assert [f.shape for f in nlc] == [(2, 45, 128)]

    # a checkpoint at the reference clip loads strictly into a model of a longer, larger reference clip
    torch.save(model.state_dict(), tmp_path / 'ckpt.pth')
    big = timm.create_model(name, num_classes=5, num_frames=16, img_size=96)
    assert big.pos_enc.grid_size == (8, 6, 6) and big.pretrained_cfg['clip_size'] == (3, 16, 96, 96)
    big.load_state_dict(torch.load(tmp_path / 'ckpt.pth', weights_only=True), strict=True)
    assert torch.isfinite(big(torch.randn(1, 3, 12, 48, 48))).all()


def test_features_only_gives_clip_maps():
    model = timm.create_model('vitpe_micro_patch16_rope_mixed_video_8x64', features_only=True, out_indices=(1, 3))
    feats = model(torch.randn(2, 3, 8, 64, 96))
    assert [f.shape for f in feats] == [(2, 128, 4, 4, 6)] * 2
    assert model.feature_info.channels() == [128] * 2 and model.feature_info.reduction() == [16] * 2
    assert model.pretrained_cfg['clip_size'] == (3, 8, 64, 64)
    fx = timm.create_model('vitpe_micro_patch16_ape_video_8x64', features_only=True, feature_cls='fx', out_indices=(3,))
    assert [f.shape for f in fx(torch.randn(1, 3, 8, 64, 64))] == [(1, 65, 128)]  # timm's FX graph: tokens


@pytest.mark.parametrize('name', [n for n in VIDEO if not n.startswith('vitpe_micro_')])
def test_every_video_model_of_224_builds_at_its_clip(name):
    """Built on the meta device (no weights drawn): the 8 x 224 clip, a 4 x 14 x 14 grid, timm's cfg entries."""
    with torch.device('meta'):
        model = timm.create_model(name)
    assert model.patch_embed.patch_size == (2, 16, 16) and model.pos_enc.grid_size == (4, 14, 14)
    assert model.pretrained_cfg['clip_size'] == (3, 8, 224, 224) and model.pretrained_cfg['input_size'] == (3, 224, 224)


def test_larger_video_models_build_and_run():
    model = timm.create_model('vitpe_tiny_patch16_rope_axial_video_8x224', num_classes=3, depth=2)
    assert model.pos_enc.grid_size == (4, 14, 14) and model.pos_enc.split == (10, 11, 11)  # 32 pairs over t, h, w
    assert model(torch.randn(1, 3, 4, 32, 48)).shape == (1, 3)


@pytest.mark.parametrize('name', ['vitpe_small_patch16_rope_axial_ape_video_8x224',
                                  'vitpe_small_patch16_rope_mixed_ape_video_8x224'])
def test_rope_with_ape_video_models_run(name):
    """RoPE-ViT's rope + APE video entries (small and base only): a 3D table on the 4 x 14 x 14 grid, resampled to
    other clips, trained with the rotations."""
    model = timm.create_model(name, num_classes=3, depth=1)
    assert model.pos_enc.table.weight.shape == (1, 4, 14, 14, 384)
    model(torch.randn(1, 3, 6, 32, 48)).square().sum().backward()
    assert model.pos_enc.table.weight.grad.abs().sum() > 0


def test_set_input_size_with_a_frame_count():
    m = timm.create_model('vitpe_micro_patch16_ape_video_8x64')
    m.set_input_size(num_frames=16)
    assert m.pos_enc.table.weight.shape == (1, 8, 4, 4, 128) and m.patch_embed.img_size == (16, 64, 64)
    m.set_input_size(img_size=96)  # a frame size alone keeps the clip length
    assert m.patch_embed.img_size == (16, 96, 96) and m.pretrained_cfg['clip_size'] == (3, 16, 96, 96)
    assert m.pretrained_cfg['input_size'] == (3, 96, 96) and m.pretrained_cfg['num_frames'] == 16
    m.set_input_size(img_size=(4, 32, 48))
    assert m.pos_enc.table.weight.shape == (1, 2, 2, 3, 128)
    with pytest.raises(ValueError, match=r"img_size=\(4, 32, 48\) has 4 frames but num_frames=8"):
        m.set_input_size(img_size=(4, 32, 48), num_frames=8)
    with pytest.raises(ValueError, match="num_frames=4 is for video models"):
        timm.create_model('vitpe_micro_patch16_64', num_frames=4)


# ------------------------------------------------------------------------------------------------ bad clips
@pytest.fixture(scope='module')
def video():
    return timm.create_model('vitpe_micro_patch16_rope_mixed_video_8x64').eval()


def test_frame_count_the_tubelet_does_not_divide(video):
    with pytest.raises(ValueError, match=r"7 frames \(input size \(7, 64, 64\)\) is not divisible by the tubelet 2 "
                                         r"\(patch size \(2, 16, 16\)\)"):
        video(torch.randn(1, 3, 7, 64, 64))
    with pytest.raises(ValueError, match=r"input size \(8, 64, 70\) is not divisible by the patch size"):
        video(torch.randn(1, 3, 8, 64, 70))


def test_image_to_video_model_and_clip_to_image_model(video):
    with pytest.raises(ValueError, match=r"expected input of shape \(B, C, T, H, W\), got a tensor of shape "
                                         r"\(2, 3, 64, 64\)"):
        video(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, C, H, W\), got a tensor of shape "
                                         r"\(1, 3, 8, 64, 64\)"):
        micro('ape')(torch.randn(1, 3, 8, 64, 64))


def test_clip_with_wrong_channels(video):
    with pytest.raises(ValueError, match=r"expected 3 input channels, got 1 \(input \(1, 1, 8, 64, 64\)\)"):
        video(torch.randn(1, 1, 8, 64, 64))


# ------------------------------------------------------------------------------------------------ T = 1 and inflation
def one_frame_model(scheme, **opts):
    """The micro video model with one frame per clip (tubelet 1): its grid is (1, H, W)."""
    return timm.create_model('vitpe_micro_patch16_video_8x64', pos_enc=scheme, pos_enc_args=opts, num_classes=3,
                             num_frames=1, patch_size=(1, 16, 16)).eval()


# sincos, rope_axial and xpos (rope_axial's channel split) do not reduce to their 2D form at T = 1 (tested below)
EQUAL_AT_ONE_FRAME = [(s, {}) for s in vitpe.list_pos_encodings() if s not in ('sincos', 'rope_axial', 'xpos')] + [
    ('ape', dict(separable=True)), ('rope_mixed', dict(ape=True)), ('irpe', dict(method='cross', on='qkv')),
    ('irpe', dict(method='euclidean')),
    ('irpe', dict(mode='bias', on='qk'))]


@pytest.mark.parametrize('scheme,opts', EQUAL_AT_ONE_FRAME, ids=lambda v: str(v))
def test_one_frame_equals_the_image_model_on_the_same_weights(scheme, opts):
    """Where a scheme's 3D definition reduces to the 2D one at T = 1, a 2D checkpoint loaded into the one-frame
    video model (inflated: tables along time, zero temporal parameters) gives the image model's output, at the
    reference size and at another one."""
    image_opts = {k: v for k, v in opts.items() if k != 'separable'}
    image = micro(scheme, pos_enc_args=image_opts)
    clip = one_frame_model(scheme, **opts)
    clip.load_state_dict(image.state_dict(), strict=True)
    for h, w in [(64, 64), (48, 80)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            torch.testing.assert_close(clip(x[:, :, None]), image(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scheme', ['sincos', 'rope_axial', 'xpos'])
def test_one_frame_where_the_3d_form_does_not_reduce(scheme):
    """sincos, rope_axial and xpos split the channels three ways: at T = 1 the t channels are constant / not rotated
    (xpos: nor scaled), and (sincos, rope_axial) the h, w channels are the 2D form of width 2 (n_h + n_w); the output
    differs from the 2D model's (xpos also gives each head its decay directions over three axes)."""
    pe3 = one_frame_model(scheme).pos_enc
    n_t, n_h, n_w = pe3.split
    assert (n_t, n_h, n_w) == ((20, 22, 22) if scheme == 'sincos' else (4, 6, 6))
    grid3 = vitpe.Grid((1, 4, 5), 0)
    if scheme == 'xpos':
        state = pe3.prepare(grid3)
        rot_q, rot_k = pe3.rotations(state, state.positions.coords(1))  # (1, heads, 20, 16) complex
        t_pairs = state.pair_axis == 0
        assert int(t_pairs.sum()) == n_t
        for rot in (rot_q, rot_k):
            torch.testing.assert_close(rot[..., t_pairs], torch.ones_like(rot[..., t_pairs]))
            assert not torch.allclose(rot[..., ~t_pairs].abs(), torch.ones(1))  # h, w: rotated and scaled
    elif scheme == 'sincos':
        pos = pe3.prepare(grid3).pos[0]  # (20, 128): [w part | h part | t part], each [sin | cos]
        ref = vitpe.pe.common.sincos_embed((4, 5), 2 * (n_h + n_w))
        torch.testing.assert_close(pos[:, :2 * (n_h + n_w)], ref)
        torch.testing.assert_close(pos[:, 2 * (n_h + n_w):], torch.cat([torch.zeros(20, n_t), torch.ones(20, n_t)], 1))
    else:
        rot = pe3.prepare(grid3).rot  # (20, 16) unit complex numbers
        pe2 = vitpe.create_pos_encoding('rope_axial', dim=2 * (n_h + n_w), num_heads=1, depth=1, grid_size=(4, 4))
        torch.testing.assert_close(rot[:, :n_h + n_w], pe2.prepare(vitpe.Grid((4, 5), 0)).rot)
        torch.testing.assert_close(rot[:, n_h + n_w:], torch.ones(20, n_t, dtype=rot.dtype))
    image = micro(scheme)
    clip = one_frame_model(scheme)
    clip.load_state_dict(image.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(clip(x[:, :, None]), image(x), atol=1e-3)


@pytest.mark.parametrize('mode', ['central', 'average'])
def test_patch_kernel_inflation(mode):
    image = micro('rope_mixed')
    with inflation(mode):
        clip = timm.create_model('vitpe_micro_patch16_rope_mixed_video_8x64', num_classes=3)
        clip.load_state_dict(image.state_dict())
    k2, k3 = image.patch_embed.proj.weight, clip.patch_embed.proj.weight
    assert k3.shape == (128, 3, 2, 16, 16)
    if mode == 'central':  # ViViT: the kernel on the middle frame of the tubelet
        torch.testing.assert_close(k3[:, :, 1], k2)
        torch.testing.assert_close(k3[:, :, 0], torch.zeros_like(k2))
    else:  # I3D: a clip of one repeated frame embeds as the image
        x = torch.randn(1, 3, 64, 64)
        tokens3, _ = clip.patch_embed(x[:, :, None].expand(-1, -1, 8, -1, -1))
        tokens2, _ = image.patch_embed(x)
        torch.testing.assert_close(tokens3.reshape(1, 4, 16, 128), tokens2[:, None].expand(-1, 4, -1, -1))
    f = clip.pos_enc.freqs  # rope_mixed: the 2D directions, and f_t = 0
    torch.testing.assert_close(f[:2], image.pos_enc.freqs)
    torch.testing.assert_close(f[2], torch.zeros_like(f[2]))
    with pytest.raises(ValueError, match="invalid mode='middle'"):
        with inflation('middle'):
            pass


def test_tables_extended_along_time():
    """An image checkpoint in a video model of 4 tubelets along t: APE's, LaPE's and abswin's global tables are
    the 2D table at every t, abswin's window a window of one frame; iRPE's product buckets repeat the 2D ones for
    each of the 7 temporal offset digits (its prefix bucket kept last); new temporal parameters start at zero
    (Fourier features' t column, separable APE's temporal table); CPE's and LePE's kernels are inflated."""
    def inflated(scheme):
        image = micro(scheme)
        clip = timm.create_model('vitpe_micro_patch16_video_8x64', pos_enc=scheme, num_classes=3)
        clip.load_state_dict(image.state_dict(), strict=True)
        return image.pos_enc, clip.pos_enc

    for scheme in ('ape', 'lape'):
        image, clip = inflated(scheme)
        assert clip.table.weight.shape == (1, 4, 4, 4, 128)
        for t in range(4):
            torch.testing.assert_close(clip.table.weight[:, t], image.table.weight)
    image, clip = inflated('abswin')
    for t in range(4):
        torch.testing.assert_close(clip.pos_embed[:, t], image.pos_embed)
    torch.testing.assert_close(clip.pos_embed_window, image.pos_embed_window[:, None])
    image, clip = inflated('irpe')
    assert (image.k_table.shape[-1], clip.k_table.shape[-1]) == (7 * 7 + 1, 7 * 7 * 7 + 1)
    for digit in range(7):
        torch.testing.assert_close(clip.k_table[..., 49 * digit:49 * (digit + 1)], image.k_table[..., :49])
    torch.testing.assert_close(clip.k_table[..., -1], image.k_table[..., -1])
    image, clip = inflated('fourier')  # W_r gains a zero t column: (t, h, w) coordinates
    torch.testing.assert_close(clip.freqs, torch.cat([torch.zeros_like(image.freqs[..., :1]), image.freqs], -1))
    image = micro('ape')
    clip = timm.create_model('vitpe_micro_patch16_ape_sep_video_8x64', num_classes=3)
    clip.load_state_dict(image.state_dict(), strict=True)  # separable: the spatial table, a zero temporal one
    torch.testing.assert_close(clip.pos_enc.table.weight, image.pos_enc.table.weight)
    assert clip.pos_enc.time_table.weight.abs().sum() == 0
    for scheme in ('cpe', 'lepe'):  # depthwise Conv3d kernels: the 2D kernel on the central slice, or a third of
        image = micro(scheme)       # it on each (k = 3)
        for mode in ('central', 'average'):
            with inflation(mode):
                clip = timm.create_model('vitpe_micro_patch16_video_8x64', pos_enc=scheme, num_classes=3)
                clip.load_state_dict(image.state_dict(), strict=True)
            for k2, k3 in zip(image.pos_enc.convs, clip.pos_enc.convs):
                k2 = k2.weight.detach()
                expected = [torch.zeros_like(k2), k2, torch.zeros_like(k2)] if mode == 'central' else [k2 / 3] * 3
                torch.testing.assert_close(k3.weight.detach(), torch.stack(expected, 2))


def test_image_checkpoint_through_timm_pretrained(tmp_path):
    from vitpe.checkpoint import save_weights
    image = micro('decomposed')
    path = str(tmp_path / 'image.safetensors')
    save_weights(image.state_dict(), path)
    clip = timm.create_model('vitpe_micro_patch16_decomposed_video_8x64', num_classes=3, pretrained=True,
                             pretrained_cfg_overlay=dict(file=path))
    assert [t.shape[1] for t in clip.pos_enc.tables] == [7, 7, 7]
    torch.testing.assert_close(clip.pos_enc.tables[1], image.pos_enc.tables[0])  # h: axis 1 of (T, H, W)
    assert clip.pos_enc.tables[0].abs().sum() == 0  # no temporal bias yet


def test_video_checkpoint_refused_by_an_image_model(tmp_path):
    from vitpe.checkpoint import save_weights
    clip = timm.create_model('vitpe_micro_patch16_ape_video_8x64', num_classes=3)
    with pytest.raises(ValueError, match=r"checkpoint of a video model \(tubelet kernel \(2, 16, 16\), "
                                         r"patch_embed.proj.weight of shape \(128, 3, 2, 16, 16\)\) cannot be loaded "
                                         r"into an image model \(patch kernel \(16, 16\)\)"):
        micro('ape').load_state_dict(clip.state_dict())
    path = str(tmp_path / 'clip.safetensors')
    save_weights(clip.state_dict(), path)
    with pytest.raises(ValueError, match="cannot be loaded into an image model"):
        timm.create_model('vitpe_micro_patch16_ape_64', num_classes=3, pretrained=True,
                          pretrained_cfg_overlay=dict(file=path))
