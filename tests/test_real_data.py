"""Training on image folders (issue 14): timm's augmentation on in training and off in evaluation, DeiT-III's
3-Augment, the evaluation protocols, no validation on training images, drop path, layer decay, gradient
accumulation, repeated augmentation and starting from timm's weights; on ImageFolder trees written here."""
import random
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import functional as TF

from vitpe.checkpoint import load_checkpoint
from vitpe.config import TrainConfig
from vitpe.data import build_dataset
from vitpe.data.pipeline import build_loaders, eval_transform, folder_split, make_sampler, train_transform
from vitpe.errors import CheckpointError
from vitpe.optim import warm_up
from vitpe.training import prepare, train, train_step

CLASSES = ('cat', 'dog', 'fox')
MICRO = dict(model='vitpe_micro_patch16_64', img_size=32, model_kwargs={'depth': 2}, batch_size=6, epochs=1,
             warmup_steps=1, quiet=True)


def write_images(folder, per_class, seed, size=(48, 40)):
    """Class-coloured noise images, each different."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
            img[..., c] = 200 + (img[..., c] % 56)
            Image.fromarray(img).save(folder / name / f'{i}.png')


@pytest.fixture(scope='module')
def imagenet_like(tmp_path_factory):
    """root/train/<class>/*.png (8 per class) and root/val/<class>/*.png (3 per class)."""
    root = tmp_path_factory.mktemp('folder')
    write_images(root / 'train', 8, seed=1)
    write_images(root / 'val', 3, seed=2)
    return str(root)


@pytest.fixture(scope='module')
def flat(tmp_path_factory):
    """root/<class>/*.png, 10 per class, no val/ folder."""
    root = tmp_path_factory.mktemp('flat')
    write_images(root, 10, seed=3)
    return str(root)


def cfg(tmp_path, data, **kw):
    return TrainConfig(**{**MICRO, 'data': data, 'output': str(tmp_path), **kw})


# ---------------------------------------------------------------------------------------------- data
def test_augmentation_is_on_in_training_and_off_in_evaluation(imagenet_like, tmp_path):
    loaders = build_loaders(cfg(tmp_path, imagenet_like, aa='rand-m9-mstd0.5-inc1', reprob=0.25), 0, 1, None)
    train_set, val_set = loaders['train_loader'].dataset, loaders['val_loader'].dataset
    assert loaders['classes'] == list(CLASSES) and len(train_set) == 24 and len(val_set) == 9
    assert not torch.equal(train_set[0][0], train_set[0][0])  # drawn anew each time
    torch.testing.assert_close(val_set[0][0], val_set[0][0], rtol=0, atol=0)
    names = [type(t).__name__ for t in train_set.transform.transforms]
    assert names[:3] == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip', 'RandAugment']
    assert names[-1] == 'RandomErasing' and train_set.transform.transforms[-1].probability == 0.25
    assert not {'RandAugment', 'RandomErasing', 'RandomHorizontalFlip'} & {
        type(t).__name__ for t in val_set.transform.transforms}


def test_each_augmentation_option_does_what_it_says(imagenet_like, tmp_path):
    def sample(**kw):
        c = cfg(tmp_path, imagenet_like, scale=[1.0, 1.0], ratio=[1.0, 1.0], **kw)
        torch.manual_seed(0)
        random.seed(0)
        return train_transform(c, 32, dict(mean=(0, 0, 0), std=(1, 1, 1)))(Image.open(f'{imagenet_like}/train/cat/0.png'))
    plain = sample(hflip=0.0)  # the whole (centre-cropped) image at 32 px, nothing random left
    torch.testing.assert_close(sample(hflip=0.0), plain)
    torch.testing.assert_close(sample(hflip=1.0), plain.flip(-1))
    torch.testing.assert_close(sample(hflip=0.0, vflip=1.0), plain.flip(-2))
    erased = sample(hflip=0.0, reprob=1.0, remode='const')  # a rectangle of zeros
    assert (erased == 0).all(0).sum() >= 0.02 * 32 * 32 and (plain == 0).all(0).sum() == 0
    jittered = sample(hflip=0.0, color_jitter=0.4)
    assert jittered.shape == plain.shape and not torch.allclose(jittered, plain)


def test_timm_3a_is_deit3_three_augment():
    """timm's --aa 3a against DeiT-III's 3-Augment (facebookresearch/deit augment.py): one of grayscale,
    solarize (threshold 128) or Gaussian blur of radius U(0.1, 2), chosen uniformly, then the colour jitter."""
    c = TrainConfig(aa='3a', color_jitter=0.3, hflip=0.0, data='folder')
    t = train_transform(c, 32, dict(mean=(0.5,) * 3, std=(0.5,) * 3))
    names = [type(s).__name__ for s in t.transforms]
    assert names[1:3] == ['AutoAugment', 'ColorJitter'] and t.transforms[2].brightness == (0.7, 1.3)
    three = t.transforms[1]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8))
    deit3 = [lambda im: im.convert('L').convert('RGB'), lambda im: ImageOps.solarize(im, 128),
             lambda im: im.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))]
    chosen = []
    for seed in range(30):
        random.seed(seed)
        out = np.asarray(three(img))
        random.seed(seed)
        k = random.choice(range(3))
        # the policy is [[solarize], [desaturate], [blur]]: map timm's order onto DeiT-III's
        expected = np.asarray(deit3[{0: 1, 1: 0, 2: 2}[k]](img))
        np.testing.assert_array_equal(out, expected)
        chosen.append(k)
    assert set(chosen) == {0, 1, 2}


def test_evaluation_protocols_crop_and_resize(imagenet_like):
    img = Image.open(f'{imagenet_like}/val/dog/0.png')  # 48 x 40
    norm = dict(mean=(0, 0, 0), std=(1, 1, 1))
    crop = eval_transform(16, crop_pct=0.8, interpolation='bilinear', protocol='crop', **norm)(img)
    manual = TF.center_crop(TF.resize(img, 20, interpolation=TF.InterpolationMode.BILINEAR), 16)  # 40 * .8 -> 16
    torch.testing.assert_close(crop, TF.to_tensor(manual))
    whole = eval_transform(16, crop_pct=0.8, interpolation='bilinear', protocol='resize', **norm)(img)
    torch.testing.assert_close(whole, TF.to_tensor(TF.resize(img, [16, 16], interpolation=TF.InterpolationMode.BILINEAR)))
    assert not torch.allclose(crop, whole)
    with pytest.raises(ValueError, match="unknown evaluation protocol 'squash'"):
        eval_transform(16, protocol='squash')


def test_checkpoint_crop_pct_and_interpolation_are_used_for_validation(imagenet_like, tmp_path):
    val = build_loaders(cfg(tmp_path, imagenet_like), 0, 1, 'vitpe_micro_patch16_64')['val_loader'].dataset
    resize = val.transform.transforms[0]
    assert resize.size == int(32 / 0.9) and resize.interpolation.value == 'bicubic'  # the zoo's pretrained cfg
    val = build_loaders(cfg(tmp_path, imagenet_like, crop_pct=1.0, interpolation='bilinear'), 0, 1,
                        'vitpe_micro_patch16_64')['val_loader'].dataset
    assert val.transform.transforms[0].size == 32 and val.transform.transforms[0].interpolation.value == 'bilinear'


def test_a_folder_without_val_is_refused_or_split_with_its_seed(flat, tmp_path):
    with pytest.raises(ValueError, match=r"has no val/ folder: validating on the training data .*--val-fraction"):
        build_loaders(cfg(tmp_path, flat), 0, 1, None)

    def split(seed):
        train = folder_split(flat, 'train', None, val_fraction=0.2, split_seed=seed)
        val = folder_split(flat, 'val', None, val_fraction=0.2, split_seed=seed)
        return set(train.indices), set(val.indices), val
    train, val, held = split(0)
    assert not train & val and len(train | val) == 30 and len(val) == 6
    assert sorted(held.dataset.targets[i] for i in val) == [0, 0, 1, 1, 2, 2]  # 20 % of each class
    assert split(0)[1] == val and split(1)[1] != val  # the split is its seed's, whatever the training seed
    loaders = build_loaders(cfg(tmp_path, flat, val_fraction=0.2, seed=5), 0, 1, None)
    assert set(loaders['val_loader'].dataset.indices) == val
    (tmp_path / 'val').mkdir()
    (tmp_path / 'train').mkdir()
    with pytest.raises(ValueError, match='has a val/ folder; --val-fraction 0.2 would hold out a second'):
        folder_split(str(tmp_path), 'train', None, val_fraction=0.2)


def test_a_folder_with_val_but_no_train_is_refused_for_training(tmp_path):
    """root/cat, root/dog and root/val/{cat,dog}: the root as training data would make val/ a third class."""
    write_images(tmp_path / 'data', 2, seed=6)
    write_images(tmp_path / 'data' / 'val', 1, seed=7)
    with pytest.raises(ValueError, match=r"has a val/ folder but no train/ folder: put the training class folders"):
        build_loaders(cfg(tmp_path, str(tmp_path / 'data'), batch_size=2), 0, 1, None)
    val = folder_split(str(tmp_path / 'data'), 'val', None)  # its val/ still evaluates (the sweep)
    assert val.classes == list(CLASSES) and len(val) == 3


def test_class_subset_and_folder_options_on_scenes(imagenet_like, tmp_path):
    loaders = build_loaders(cfg(tmp_path, imagenet_like, classes=['fox', 'cat']), 0, 1, None)
    assert loaders['classes'] == ['fox', 'cat'] and len(loaders['train_loader'].dataset) == 16
    with pytest.raises(ValueError, match=r"classes \['cow'\] are not folders"):
        build_loaders(cfg(tmp_path, imagenet_like, classes=['cow']), 0, 1, None)
    with pytest.raises(ValueError, match=r"\['aa', 'reprob'\] apply to image folders"):
        build_loaders(cfg(tmp_path, 'synthetic:position', aa='3a', reprob=0.2), 0, 1, None)
    with pytest.raises(ValueError, match=r"\['recount', 'aug_repeats', 'split_seed'\] apply to image folders"):
        build_loaders(cfg(tmp_path, 'synthetic:position', recount=2, aug_repeats=3, split_seed=1), 0, 1, None)


def test_repeated_augmentation_repeats_each_image_per_process(imagenet_like, tmp_path):
    ds = folder_split(imagenet_like, 'train', None)
    c = cfg(tmp_path, imagenet_like, aug_repeats=3)
    one = list(make_sampler(ds, c, 0, 1))
    assert len(one) == len(ds) and all(one[i] == one[i - i % 3] for i in range(len(one)))  # runs of 3 copies
    ranks = [list(make_sampler(ds, c, r, 3)) for r in range(3)]
    assert all(len(r) == len(ds) // 3 for r in ranks)
    assert ranks[0] == ranks[1] == ranks[2]  # the 3 copies of an image: one per process, at the same step
    assert len(set(ranks[0])) == len(ds) // 3
    assert sorted(list(make_sampler(ds, cfg(tmp_path, imagenet_like), 0, 1))) == list(range(24))  # off: each once


# ---------------------------------------------------------------------------------------------- optimisation
def test_drop_path_is_active_in_training_only(imagenet_like, tmp_path):
    run = prepare(cfg(tmp_path, imagenet_like, drop_path=0.5, model_kwargs={'depth': 3}), 0, 1, torch.device('cpu'))
    assert [getattr(b.drop_path1, 'drop_prob', 0.0) for b in run.unwrapped.blocks] == [0.0, 0.25, 0.5]  # linear in depth
    x = torch.randn(4, 3, 32, 32)
    run.model.train()
    assert not torch.allclose(run.model(x), run.model(x))
    run.model.eval()
    torch.testing.assert_close(run.model(x), run.model(x))
    assert 'drop_path_rate' not in run.model_kwargs  # the checkpoint's model is built without it


def test_drop_path_mode_constant_gives_every_block_the_rate(imagenet_like, tmp_path):
    """DeiT-III (facebookresearch/deit models_v2.py, vit_models): dpr = [drop_path_rate] * depth."""
    run = prepare(cfg(tmp_path, imagenet_like, drop_path=0.3, drop_path_mode='constant', model_kwargs={'depth': 3}),
                  0, 1, torch.device('cpu'))
    rates = [(b.drop_path1.drop_prob, b.drop_path2.drop_prob) for b in run.unwrapped.blocks]
    assert rates == [(0.3, 0.3)] * 3 and 'drop_path_mode' not in run.model_kwargs
    with pytest.raises(ValueError, match="drop_path_mode 'constant' applies to vitpe models"):
        prepare(cfg(tmp_path, imagenet_like, model='vit_tiny_patch16_224', drop_path=0.1, drop_path_mode='constant'),
                0, 1, torch.device('cpu'))
    with pytest.raises(ValueError, match="drop_path_mode must be 'linear' or 'constant', got 'ramp'"):
        cfg(tmp_path, imagenet_like, drop_path=0.1, drop_path_mode='ramp')
    with pytest.raises(ValueError, match="invalid drop_path_mode='ramp'"):
        timm.create_model('vitpe_micro_patch16_64', drop_path_rate=0.1, drop_path_mode='ramp')


def test_layer_decay_gives_each_block_its_learning_rate(imagenet_like, tmp_path):
    run = prepare(cfg(tmp_path, imagenet_like, layer_decay=0.5, lr=1e-3, warmup_steps=4, model_kwargs={'depth': 3}),
                  0, 1, torch.device('cpu'))
    layer = {'cls_token': 0, 'pos_enc': 0, 'patch_embed': 0, 'blocks.0': 1, 'blocks.1': 2, 'blocks.2': 3,
             'norm': 3, 'head': 4}  # stem 0, block i at i + 1, the final norm with the last block (as timm's ViT)

    def check(peak):
        groups = {id(p): g for g in run.optimizer.param_groups for p in g['params']}
        names = [n for n, p in run.unwrapped.named_parameters() if p.requires_grad]
        assert all(any(n.startswith(k) for k in layer) for n in names)
        for name, p in run.unwrapped.named_parameters():
            key = next(k for k in layer if name.startswith(k))
            assert groups[id(p)]['lr'] == pytest.approx(peak * 0.5 ** (4 - layer[key])), name
    warm_up(run)  # update 1 of a 4-update warm-up: a quarter of each group's peak
    check(1e-3 / 4)
    train_step(run, [next(iter(run.train_loader))], 0, 0, [])
    run.scheduler.step_update(8)  # after the warm-up: timm's schedule, times each group's scale
    check(run.scheduler._get_values(8, on_epoch=False)[0])


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    base = dict(model='vitpe_micro_patch16_64', model_kwargs={'depth': 2}, img_size=32, train_samples=48,
                val_samples=8, epochs=1, warmup_steps=2, quiet=True)

    def weights(name, **kw):
        train(TrainConfig(**base, output=str(tmp_path / name), **kw))
        return load_checkpoint(str(tmp_path / name / 'last.pth'))['model']
    big = weights('big', batch_size=16)
    accumulated = weights('accum', batch_size=16, grad_accum_steps=4)  # 4 micro-batches of 4
    small = weights('small', batch_size=4, max_steps_per_epoch=3)
    for k in big:
        torch.testing.assert_close(accumulated[k], big[k], atol=1e-5, rtol=1e-4, msg=k)
    assert not torch.allclose(small['head.weight'], big['head.weight'], atol=1e-4)
    with pytest.raises(ValueError, match='not divisible by the 1 processes x 3 accumulation steps'):
        train(TrainConfig(**base, output=str(tmp_path / 'x'), batch_size=16, grad_accum_steps=3))


def test_learning_rate_scaling_and_warmup_epochs(imagenet_like, tmp_path):
    run = prepare(cfg(tmp_path, imagenet_like, lr_base=5e-4, lr_base_size=512, batch_size=6, warmup_epochs=2.0),
                  0, 1, torch.device('cpu'))
    assert run.base_lrs[0] == pytest.approx(5e-4 * 6 / 512) and run.warmup == 2 * run.steps_per_epoch == 8


# ---------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize('src,dst', [('vit_tiny_patch16_224', 'vitpe_tiny_patch16_ape_224'),
                                     ('vit_small_patch16_rope_mixed_224', 'vitpe_small_patch16_rope_mixed_224')])
def test_start_from_timm_weights(src, dst, imagenet_like, tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(1)
    ref = timm.create_model(src, depth=1).eval()
    path = str(tmp_path / 'timm.safetensors')
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    x = torch.randn(2, 3, 224, 224)
    for how in (dict(pretrained=True, pretrained_path=path), dict(initial_checkpoint=path)):
        c = cfg(tmp_path / 'run', imagenet_like, model=dst, model_kwargs={'depth': 1}, img_size=224, **how)
        run = prepare(c, 0, 1, torch.device('cpu'))
        with torch.no_grad():
            torch.testing.assert_close(run.unwrapped.eval().forward_features(x), ref.forward_features(x),
                                       atol=1e-4, rtol=0)
        assert run.unwrapped.head.out_features == 3  # a new head for the three classes


def test_pretrained_without_a_file_says_nothing_is_downloaded(imagenet_like, tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    for model in ('vit_tiny_patch16_224', 'vitpe_micro_patch16_64'):
        with pytest.raises(CheckpointError, match='vitpe downloads nothing .*--pretrained-path'):
            prepare(cfg(tmp_path, imagenet_like, model=model, pretrained=True), 0, 1, torch.device('cpu'))
    with pytest.raises(CheckpointError, match='do not exist'):
        prepare(cfg(tmp_path, imagenet_like, pretrained_path=str(tmp_path / 'none.pth')), 0, 1, torch.device('cpu'))


def test_a_flat_folder_evaluates_whole_as_a_test_set(flat):
    ds = build_dataset(flat, 32, 'test', 5, seed=0)
    assert len(ds) == 5 and len({ds.dataset.targets[i] for i in ds.indices}) > 1  # a random subset, not class 0


# ---------------------------------------------------------------------------------------------- resolution sweep
def test_sweep_on_a_real_validation_folder_uses_the_checkpoints_transform(imagenet_like, tmp_path, tool):
    from vitpe.eval import sweep
    summary = train(cfg(tmp_path / 'run', imagenet_like, crop_pct=1.0, interpolation='bilinear', epochs=1))
    best = str(tmp_path / 'run' / 'best.pth')
    crop = sweep([best], [32, 48], protocol='crop', progress=False)
    resize = sweep([best], [32, 48], protocol='resize', progress=False)
    assert [(r.res, r.n, r.protocol) for r in crop] == [(32, 9, 'crop'), (48, 9, 'crop')]  # the 9 val/ images
    # at the training size, 'crop' is training's own validation (the checkpoint's crop_pct 1.0, bilinear)
    assert crop[0].acc == summary['val_acc'] and crop[0].loss == pytest.approx(summary['val_loss'], rel=1e-5)
    assert resize[0].loss != pytest.approx(crop[0].loss)  # 48 x 40 images: squeezed, not cropped
    with pytest.raises(ValueError, match="unknown evaluation protocol 'fit'"):
        sweep([best], [32], protocol='fit', progress=False)
    out = tmp_path / 'sweep'
    assert tool('eval_resolution').main(['--checkpoint', best, '--resolutions', '32', '--protocol', 'crop', 'resize',
                                         '--output', str(out)]) == 0
    table = open(out / 'results.md').read()
    assert '| run (crop) |' in table and '| run (resize) |' in table
    both = sweep([best], [32, 48], protocol=['crop', 'resize'], progress=False)  # protocols outermost, labelled
    assert [(r.label, r.res, r.protocol, r.loss) for r in both] == \
        [(f'run ({r.protocol})', r.res, r.protocol, r.loss) for r in crop + resize]


def test_sweep_on_the_training_folder_keeps_to_its_held_out_split(flat, imagenet_like, tmp_path):
    """--data <the folder it trained on, no val/>: the 6 images --val-fraction 0.2 held out, not all 30."""
    from vitpe.data.pipeline import eval_spec
    from vitpe.eval import sweep
    summary = train(cfg(tmp_path / 'run', flat, val_fraction=0.2, split_seed=3, crop_pct=1.0))
    best = str(tmp_path / 'run' / 'best.pth')
    (tmp_path / 'link').symlink_to(flat)
    for data in (None, flat, flat + '/', str(tmp_path / 'link')):
        [record] = sweep([best], [32], data=data, progress=False)
        assert record.n == 6 and record.acc == summary['val_acc'], data
    shutil.copytree(flat, tmp_path / 'other')  # another folder without val/: a test set, all of it
    assert sweep([best], [32], data=str(tmp_path / 'other'), progress=False)[0].n == 30
    with pytest.raises(ValueError, match=r"is the training images of this checkpoint; give --data"):
        eval_spec({'data': imagenet_like, 'model_name': None}, 'crop', f'{imagenet_like}/train')


def test_two_processes_with_accumulation_train_as_one(tmp_path):
    """torchrun with 2 processes x 2 micro-batches (DDP syncs the last one only) = 1 process, 1 batch of 16."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS='1')

    def args(out, *extra):
        return [os.path.join(root, 'tools', 'train.py'), '--model', 'vitpe_micro_patch16_64', '--model-kwargs',
                json.dumps({'depth': 2}), '--img-size', '32', '--train-samples', '64', '--val-samples', '16',
                '--batch-size', '16', '--epochs', '1', '--warmup-steps', '2', '--output', str(out), '--quiet', *extra]
    one = subprocess.run([sys.executable, *args(tmp_path / 'one')], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          *args(tmp_path / 'two', '--grad-accum-steps', '2')], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_checkpoint(str(tmp_path / 'one' / 'last.pth')), load_checkpoint(str(tmp_path / 'two' / 'last.pth'))
    assert a['num_updates'] == b['num_updates'] == 4
    for k in a['model']:
        torch.testing.assert_close(b['model'][k], a['model'][k], atol=1e-5, rtol=1e-4, msg=k)


def test_unreadable_images_are_skipped_and_counted_in_training(tmp_path):
    write_images(tmp_path / 'data' / 'train', 3, seed=4)
    write_images(tmp_path / 'data' / 'val', 2, seed=5)
    (tmp_path / 'data' / 'train' / 'cat' / 'broken.png').write_bytes(b'not an image')
    c = cfg(tmp_path / 'run', str(tmp_path / 'data'), batch_size=10, aa='3a')  # one batch: every file
    loaders = build_loaders(c, 0, 1, None)
    with pytest.warns(UserWarning, match='skipping unreadable image .*broken.png'):
        seen = sum(len(b[1]) for b in loaders['train_loader'] if b is not None)
    assert loaders['train_loader'].dataset.num_corrupt == 1 and seen == 9
    with pytest.warns(UserWarning, match='skipping unreadable image'):
        assert train(c)['epoch'] == 1


def test_mixup_with_an_unreadable_image_keeps_its_batches_even(tmp_path):
    """9 readable images and a broken one in a batch of 10: timm's Mixup needs an even batch, one sample goes."""
    write_images(tmp_path / 'data' / 'train', 3, seed=4)
    write_images(tmp_path / 'data' / 'val', 2, seed=5)
    (tmp_path / 'data' / 'train' / 'cat' / 'broken.png').write_bytes(b'not an image')
    c = cfg(tmp_path / 'run', str(tmp_path / 'data'), batch_size=10, mixup=0.8, cutmix=1.0)
    from vitpe.training import update_batches
    run = prepare(c, 0, 1, torch.device('cpu'))
    with pytest.warns(UserWarning) as caught:
        batches = [b for group in update_batches(run) for b in group]
        assert train(c)['epoch'] == 1
    assert [len(b[1]) for b in batches] == [8] and run.mixup_dropped == 1
    messages = [str(w.message) for w in caught]
    assert sum('skipping unreadable image' in m for m in messages) == 2
    assert sum('mixup / cutmix need an even batch: dropped one sample of a batch of 9' in m for m in messages) == 2
    with pytest.raises(ValueError, match=r'mixup / cutmix need an even batch .* = 5'):
        build_loaders(c.replace(grad_accum_steps=2), 0, 1, None)


def test_a_file_that_holds_no_weights_is_refused_by_name(imagenet_like, tmp_path):
    (tmp_path / 'notes.pth').write_text('hello')
    for how in (dict(pretrained_path=str(tmp_path / 'notes.pth')), dict(initial_checkpoint=str(tmp_path / 'notes.pth'))):
        with pytest.raises(CheckpointError, match='could not be read as a torch file'):
            prepare(cfg(tmp_path, imagenet_like, model='vit_tiny_patch16_224', **how), 0, 1, torch.device('cpu'))


def test_sample_caps_draw_random_subsets_of_a_folder(imagenet_like, tmp_path):
    loaders = build_loaders(cfg(tmp_path, imagenet_like, train_samples=12, val_samples=5), 0, 1, None)
    train_set, val_set = loaders['train_loader'].dataset, loaders['val_loader'].dataset
    assert len(train_set) == 12 and len(val_set) == 5
    assert len({train_set.dataset.targets[i] for i in train_set.indices}) == 3  # not the first class only


def test_validation_subset_is_drawn_with_the_split_seed(imagenet_like, tmp_path):
    def subsets(**kw):
        loaders = build_loaders(cfg(tmp_path, imagenet_like, train_samples=12, val_samples=4, **kw), 0, 1, None)
        return loaders['train_loader'].dataset.indices, loaders['val_loader'].dataset.indices
    (train0, val0), (train1, val1), (_, val2) = subsets(seed=0), subsets(seed=1), subsets(seed=1, split_seed=2)
    assert val1 == val0 and train1 != train0 and val2 != val0  # runs of several seeds validate on the same images


def test_resume_does_not_need_the_pretrained_file_and_a_corrupt_start_names_the_read_error(imagenet_like, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / 'weights.safetensors'
    save_file(timm.create_model('vitpe_micro_patch16_64', depth=2, num_classes=3).state_dict(), str(path))
    c = cfg(tmp_path / 'run', imagenet_like, pretrained_path=str(path), max_steps_per_epoch=1)
    train(c)
    path.unlink()
    assert train(c.replace(epochs=2, resume='auto'))['epoch'] == 2
    (tmp_path / 'cut.pth').write_bytes(open(tmp_path / 'run' / 'last.pth', 'rb').read()[:2000])  # truncated
    with pytest.raises(CheckpointError, match=r"could not be read as a torch file .*give --model"):
        prepare(cfg(tmp_path, imagenet_like, model=None, initial_checkpoint=str(tmp_path / 'cut.pth')), 0, 1,
                torch.device('cpu'))


def test_bce_loss_channels_last_and_train_interpolation(imagenet_like, tmp_path):
    import torch.nn.functional as F
    c = cfg(tmp_path, imagenet_like, bce_loss=True, bce_target_thresh=0.0, mixup=0.8, channels_last=True,
            train_interpolation='bicubic')
    run = prepare(c, 0, 1, torch.device('cpu'))
    logits = torch.randn(4, 3)
    mixed = torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8], [0.0, 0.0, 1.0]])
    # DeiT-III's engine.py: targets above 0 become 1, then BCE with logits over the classes
    expected = F.binary_cross_entropy_with_logits(logits, (mixed > 0).float())
    torch.testing.assert_close(run.criterion(logits, mixed), expected)
    kernel = run.unwrapped.patch_embed.proj.weight
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    assert train_step(run, [next(iter(run.train_loader))], 0, 0, []) > 0
    assert run.train_loader.dataset.transform.transforms[0].interpolation.value == 'bicubic'
    default = train_transform(TrainConfig(data='folder'), 32, dict(mean=(0,) * 3, std=(1,) * 3))
    assert default.transforms[0].interpolation.value == 'bilinear'
