"""mmdetection 3.3 / mmsegmentation 1.2: each config in configs/mmdet and configs/mmseg builds at its real size,
and, with a small override (micro backbone, 128 px images, the built-in scenes written in COCO and ADE20K
layouts), trains two iterations and predicts through mmengine's Runner. The layer-decay optimizer follows
ViTDet's rule; the backbone loads a classification checkpoint safely. Without the mm stack these tests fail,
saying how to install it (scripts/install_mm.sh)."""
import glob
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_*.py')))
SEG_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'mmseg', 'upernet_*.py')))
SCHEMES = ('ape', 'rope_mixed', 'irpe', 'decomposed')
KINDS = ('circle', 'square', 'triangle', 'ring')
SIZE = 128

try:
    import mmcv.ops  # noqa: F401  (the compiled ops: RoIAlign, NMS)
    import mmdet  # noqa: F401
    import mmseg  # noqa: F401
    from mmengine.config import Config
    from mmengine.runner import Runner
    import vitpe.integrations.mm as vmm
    MM_ERROR = None
except ImportError as e:
    MM_ERROR = e


@pytest.fixture(autouse=True)
def mm_stack():
    if MM_ERROR is not None:
        pytest.fail(f"the mm stack is not importable ({MM_ERROR}): run scripts/install_mm.sh (make test does)",
                    pytrace=False)


def scheme_of(path):
    return os.path.basename(path).split('_')[1].split('-', 2)[2].replace('-', '_')


def test_a_config_per_scheme():
    assert sorted(map(scheme_of, DET_CONFIGS)) == sorted(SCHEMES)
    assert sorted(map(scheme_of, SEG_CONFIGS)) == sorted(SCHEMES)


def test_import_vitpe_without_mm_and_the_hint():
    code = ("import sys\nfor m in ('mmengine', 'mmcv', 'mmdet', 'mmseg'): sys.modules[m] = None\n"
            "import vitpe, vitpe.dense, vitpe.integrations\n"
            "try:\n    import vitpe.integrations.mm\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert 'scripts/install_mm.sh' in out.stdout


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from vitpe.dense.data import write_coco, write_segmentation_folders
    root = tmp_path_factory.mktemp('mm_data')
    for split, n, seed in (('train', 4, 0), ('val', 2, 1)):
        write_coco(str(root / 'coco'), n, SIZE, split, seed)
    for split, n, seed in (('train', 4, 0), ('val', 2, 1)):
        write_segmentation_folders(str(root / 'ade'), n, SIZE, split, seed)
    return root


def micro_backbone(cfg, scheme, out_indices):
    cfg.model.backbone.update(model=f'vitpe_micro_patch16_{scheme}_64', img_size=SIZE, window_size=4,
                              global_blocks=(1, 3), out_indices=out_indices)


def set_step(pipeline, kind, **kw):
    steps = [s for s in pipeline if s['type'] == kind]
    assert steps, f'no {kind} in the pipeline'
    for s in steps:
        s.update(kw)


def run_settings(cfg, work_dir):
    """Two CPU iterations, no validation, no checkpoints."""
    cfg.work_dir = str(work_dir)
    cfg.launcher = 'none'
    cfg.log_level = 'WARNING'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=10 ** 6)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 6, by_epoch=False)
    cfg.optim_wrapper.type = 'OptimWrapper'  # AMP needs a GPU
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        loader.update(num_workers=0, persistent_workers=False, batch_size=2)


def det_override(cfg, scheme, data, work_dir):
    micro_backbone(cfg, scheme, (-1,))
    cfg.model.neck.in_channels = 128
    cfg.model.data_preprocessor.batch_augments[0].size = (SIZE, SIZE)
    for s in ('train', 'test'):
        pipeline = getattr(cfg, f'{s}_dataloader').dataset.pipeline
        set_step(pipeline, 'Pad', size=(SIZE, SIZE))
    set_step(cfg.train_dataloader.dataset.pipeline, 'RandomResize', scale=(SIZE, SIZE))
    set_step(cfg.train_dataloader.dataset.pipeline, 'RandomCrop', crop_size=(SIZE, SIZE))
    set_step(cfg.test_dataloader.dataset.pipeline, 'Resize', scale=(SIZE, SIZE))
    meta = dict(classes=KINDS)
    cfg.train_dataloader.dataset.update(data_root=str(data / 'coco'), ann_file='annotations/instances_train.json',
                                        data_prefix=dict(img='train/'), metainfo=meta)
    cfg.train_dataloader.dataset.filter_cfg = dict(filter_empty_gt=True, min_size=4)
    cfg.test_dataloader.dataset.update(data_root=str(data / 'coco'), ann_file='annotations/instances_val.json',
                                       data_prefix=dict(img='val/'), metainfo=meta)
    cfg.test_evaluator.ann_file = str(data / 'coco' / 'annotations' / 'instances_val.json')
    small_heads(cfg.model)
    run_settings(cfg, work_dir)


def small_heads(model, width=32):
    """Narrow heads and few proposals and samples: the R-CNN heads at their real width and 512 RoIs cost ~20 s
    an iteration on two CPU cores."""
    model.neck.out_channels = width
    model.rpn_head.update(in_channels=width, feat_channels=width)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = roi.mask_roi_extractor.out_channels = width
    roi.bbox_head.update(in_channels=width, conv_out_channels=width, fc_out_channels=2 * width,
                         num_classes=len(KINDS))
    roi.mask_head.update(in_channels=width, conv_out_channels=width, num_classes=len(KINDS))
    model.train_cfg.rpn.sampler.num = model.train_cfg.rcnn.sampler.num = 64
    for rpn in (model.train_cfg.rpn_proposal, model.test_cfg.rpn):
        rpn.update(nms_pre=200, max_per_img=100)
    model.test_cfg.rcnn.max_per_img = 20


def seg_override(cfg, scheme, data, work_dir):
    micro_backbone(cfg, scheme, (0, 1, 2, 3))
    cfg.model.neck.update(in_channels=[128] * 4, out_channels=64)
    cfg.model.decode_head.update(in_channels=[64] * 4, channels=32, num_classes=len(KINDS))
    cfg.model.auxiliary_head.update(in_channels=64, channels=16, num_classes=len(KINDS))
    cfg.model.data_preprocessor.size = (SIZE, SIZE)
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        head.norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
    set_step(cfg.train_dataloader.dataset.pipeline, 'RandomResize', scale=(4 * SIZE, SIZE))
    set_step(cfg.train_dataloader.dataset.pipeline, 'RandomCrop', crop_size=(SIZE, SIZE))
    set_step(cfg.test_dataloader.dataset.pipeline, 'Resize', scale=(4 * SIZE, SIZE))
    # the built-in scenes in ADE20K's layout (png images; 0 = background, reduced away as ADE20K's 'other')
    for loader, split in ((cfg.train_dataloader, 'train'), (cfg.test_dataloader, 'val')):
        loader.dataset.update(type='BaseSegDataset', data_root=str(data / 'ade'), img_suffix='.png',
                              seg_map_suffix='.png', reduce_zero_label=True,
                              metainfo=dict(classes=KINDS, palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255],
                                                                    [255, 255, 0]]),
                              data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'))
    run_settings(cfg, work_dir)


def train_and_predict(cfg):
    runner = Runner.from_cfg(cfg)
    trunk = [m for m in runner.model.modules() if isinstance(m, vmm.VitpeBackbone)][0].vit.trunk
    before = trunk.blocks[0].attn.qkv.weight.detach().clone()
    runner.train()
    assert runner.iter == 2
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
    assert not torch.equal(before, trunk.blocks[0].attn.qkv.weight), 'the backbone did not train'
    batch = next(iter(runner.build_dataloader(cfg.test_dataloader)))
    runner.model.eval()
    with torch.no_grad():
        return runner.model.test_step(batch)


def build_model(cfg):
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    init_default_scope(cfg.default_scope)
    return (DET if cfg.default_scope == 'mmdet' else SEG).build(cfg.model)


def real_size_checks(cfg, scheme):
    b = cfg.model.backbone
    assert b.model == f'vitpe_base_patch16_{scheme}_224' and b.type == 'VitpeBackbone'
    model = build_model(cfg)
    trunk = model.backbone.vit.trunk
    assert (trunk.embed_dim, len(trunk.blocks)) == (768, 12)
    return model


@pytest.mark.parametrize('path', DET_CONFIGS, ids=scheme_of)
def test_mmdet_config(path, data, tmp_path):
    scheme = scheme_of(path)
    cfg = Config.fromfile(path)
    # the real recipe: ViTDet's windows, global blocks, LSJ at 1024, AdamW with layer decay
    assert cfg.model.backbone.window_size == 14 and tuple(cfg.model.backbone.global_blocks) == (2, 5, 8, 11)
    assert cfg.image_size == (1024, 1024) and cfg.optim_wrapper.paramwise_cfg.decay_rate == 0.7
    assert cfg.train_cfg.max_iters == 184375 and cfg.optim_wrapper.optimizer.type == 'AdamW'
    model = real_size_checks(cfg, scheme)
    windowed = [i for i, blk in enumerate(model.backbone.vit.trunk.blocks) if blk.attn.windowed]
    assert windowed == [0, 1, 3, 4, 6, 7, 9, 10]
    det_override(cfg, scheme, data, tmp_path)
    out = train_and_predict(cfg)
    assert len(out) == 2
    for sample in out:
        pred = sample.pred_instances
        h, w = sample.ori_shape
        n = len(pred.bboxes)
        assert pred.bboxes.shape == (n, 4) and pred.scores.shape == pred.labels.shape == (n,)
        assert pred.masks.shape == (n, h, w) and (pred.labels < len(KINDS)).all()


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=scheme_of)
def test_mmseg_config(path, data, tmp_path):
    scheme = scheme_of(path)
    cfg = Config.fromfile(path)
    assert cfg.crop_size == (512, 512) and cfg.train_cfg.max_iters == 160000
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.num_classes == 150
    assert tuple(cfg.model.backbone.out_indices) == (2, 5, 8, 11) and cfg.optim_wrapper.optimizer.lr == 6e-5
    real_size_checks(cfg, scheme)
    seg_override(cfg, scheme, data, tmp_path)
    out = train_and_predict(cfg)
    assert len(out) == 2
    for sample in out:
        seg = sample.pred_sem_seg.data
        assert seg.shape == (1, *sample.ori_shape) and seg.min() >= 0 and seg.max() < len(KINDS)


def test_layer_decay_follows_vitdet(data, tmp_path):
    """lr of block i = lr * 0.7 ** (depth - i), the stem lr * 0.7 ** (depth + 1), the rest lr; no weight decay
    on 1-D tensors and the trunk's position tables."""
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(DET_CONFIGS[0])
    det_override(cfg, 'irpe', data, tmp_path)
    model = build_model(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    lr, wd = 1e-4, 0.1
    group = {id(p): g for g in optimizer.param_groups for p in g['params']}
    trunk = model.backbone.vit.trunk
    depth = len(trunk.blocks)
    assert depth == 4
    for i, blk in enumerate(trunk.blocks):
        g = group[id(blk.attn.qkv.weight)]
        assert g['lr'] == pytest.approx(lr * 0.7 ** (depth - i)) and g['weight_decay'] == wd
        assert group[id(blk.attn.qkv.bias)]['weight_decay'] == 0
    assert group[id(trunk.patch_embed.proj.weight)]['lr'] == pytest.approx(lr * 0.7 ** (depth + 1))
    for p in trunk.pos_enc.parameters():
        assert group[id(p)]['weight_decay'] == 0
    neck = next(model.neck.parameters())
    assert group[id(neck)]['lr'] == pytest.approx(lr) and group[id(neck)]['weight_decay'] == wd
    assert sum(len(g['params']) for g in optimizer.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match='decay_rate only'):
        build_optim_wrapper(model, dict(cfg.optim_wrapper, paramwise_cfg=dict(decay_rate=0.7, num_layers=12)))


def test_backbone_loads_a_classification_checkpoint_safely(tmp_path):
    import timm
    from helpers import Exploit
    from vitpe.errors import CheckpointError
    source = timm.create_model('vitpe_micro_patch16_decomposed_64', num_classes=7)
    torch.save(source.state_dict(), tmp_path / 'cls.pth')
    backbone = vmm.VitpeBackbone('vitpe_micro_patch16_decomposed_64', img_size=SIZE, window_size=4,
                                 global_blocks=(1, 3), checkpoint=str(tmp_path / 'cls.pth'))
    assert not torch.equal(backbone.vit.trunk.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    backbone.init_weights()
    torch.testing.assert_close(backbone.vit.trunk.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    feats = backbone(torch.randn(1, 3, SIZE, SIZE + 32))
    assert isinstance(feats, tuple) and feats[0].shape == (1, 128, SIZE // 16, (SIZE + 32) // 16)
    torch.save({'state_dict': source.state_dict(), 'x': Exploit(str(tmp_path / 'ran'))}, tmp_path / 'bad.pth')
    bad = vmm.VitpeBackbone('vitpe_micro_patch16_decomposed_64', checkpoint=str(tmp_path / 'bad.pth'))
    with pytest.raises(CheckpointError, match='pickled Python objects'):
        bad.init_weights()
    assert not (tmp_path / 'ran').exists()
    with pytest.raises(ValueError, match='checkpoint='):
        vmm.VitpeBackbone('vitpe_micro_patch16_ape_64', init_cfg=dict(type='Pretrained', checkpoint='x.pth'))
