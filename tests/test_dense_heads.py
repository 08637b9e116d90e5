"""torchvision detectors and the segmenters over a tiny vitpe backbone: built by name with num_classes not counting
background, one training iteration (losses, gradients into the trunk, a few steps lower the loss on one batch) and
prediction."""
import pytest
import torch

from vitpe.dense import build_detector, build_segmenter

BACKBONE = 'vitpe_micro_patch16_rope_mixed_64'
TRUNK = dict(window_size=2, global_blocks=(1, 3))
NUM_CLASSES = 3


def batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 96, generator=g), torch.rand(3, 64, 80, generator=g)]
    masks = [torch.zeros(2, 64, 96, dtype=torch.uint8), torch.zeros(1, 64, 80, dtype=torch.uint8)]
    masks[0][0, 5:30, 5:30] = masks[0][1, 10:50, 40:60] = masks[1][0, 8:40, 20:50] = 1
    targets = [dict(boxes=torch.tensor([[5., 5, 30, 30], [40, 10, 60, 50]]), labels=torch.tensor([1, 3]),
                    masks=masks[0]),
               dict(boxes=torch.tensor([[20., 8, 50, 40]]), labels=torch.tensor([2]), masks=masks[1])]
    for img, t in zip(images, targets):  # the objects drawn, so that there is something to learn
        for box, label in zip(t['boxes'].long(), t['labels']):
            img[:, box[1]:box[3], box[0]:box[2]] = torch.eye(3)[label - 1][:, None, None]  # red, green, blue
    return images, targets


def train_steps(model, loss_fn, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = sum(loss_fn().values())
        opt.zero_grad()
        loss.backward()
        if not losses:
            trunk = model.backbone.vit.trunk
            assert trunk.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the loss reaches the trunk
            assert trunk.pos_enc.freqs.grad.abs().sum() > 0  # and the scheme
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize('name', ['maskrcnn', 'retinanet', 'fasterrcnn'])
def test_detector_trains_and_predicts(name):
    torch.manual_seed(0)
    small = dict(detections_per_img=10) if name == 'retinanet' else dict(  # small heads and proposal counts
        box_detections_per_img=10, box_head_size=128, mask_head_channels=32, rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=64)
    model = build_detector(name, BACKBONE, NUM_CLASSES, out_channels=32, backbone_args=TRUNK, min_size=64,
                           max_size=96, **small)
    images, targets = batch()
    if name == 'retinanet':
        assert model.head.classification_head.num_classes == NUM_CLASSES + 1
    else:
        assert model.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES + 1
    if name == 'maskrcnn':
        assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == NUM_CLASSES + 1
    model.train()
    first = model(images, targets)
    want = {'maskrcnn': {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'},
            'fasterrcnn': {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'},
            'retinanet': {'classification', 'bbox_regression'}}[name]
    assert set(first) == want and all(v.isfinite() for v in first.values())
    losses = train_steps(model, lambda: model(images, targets), 6)
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        preds = model(images)
    assert len(preds) == 2
    for img, p in zip(images, preds):
        assert set(p) >= {'boxes', 'labels', 'scores'}
        if len(p['labels']):
            assert p['labels'].min() >= 1 and p['labels'].max() <= NUM_CLASSES
            assert (p['boxes'][:, 2] <= img.shape[2]).all() and (p['boxes'][:, 3] <= img.shape[1]).all()
        if name == 'maskrcnn':
            assert p['masks'].shape == (len(p['boxes']), 1, *img.shape[1:])


@pytest.mark.parametrize('name', ['upernet', 'semantic_fpn'])
def test_segmenter_trains_and_predicts(name):
    torch.manual_seed(0)
    model = build_segmenter(name, BACKBONE, NUM_CLASSES, out_channels=32, channels=32, backbone_args=TRUNK)
    images, targets = batch()
    x = images[0][None, :, :, :80].repeat(2, 1, 1, 1)[:, :, :60]  # 60 x 80: padded to a multiple of 32 inside
    masks = torch.zeros(2, 60, 80, dtype=torch.long)
    masks[:, 5:30, 5:30] = 1
    masks[:, 10:50, 40:60] = 3
    masks[1, 0, :] = 255  # ignored
    model.train()
    losses = train_steps(model, lambda: model(x, masks), 6)
    assert losses[-1] < losses[0]
    model.eval()
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES + 1, 60, 80)
    pred = model.predict(x)
    assert pred.shape == (2, 60, 80) and pred.dtype == torch.long and pred.max() <= NUM_CLASSES


def test_builders_refuse_bad_arguments():
    with pytest.raises(ValueError, match='unknown detector'):
        build_detector('yolo', BACKBONE, 3)
    with pytest.raises(ValueError, match='unknown segmenter'):
        build_segmenter('deeplab', BACKBONE, 3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match='background not counted'):
            build_detector('maskrcnn', BACKBONE, bad)
    with pytest.raises(ValueError, match='background not counted'):
        build_segmenter('upernet', BACKBONE, 0)
