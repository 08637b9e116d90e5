"""Dense data: the synthetic scenes written as COCO and as image / label-map folders and read back; albumentations
pipelines keep boxes, labels and masks in step; COCO AP and mIoU against hand-computed values; bad input named."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vitpe.dense.data import CocoDetection, SegmentationFolder, write_coco, write_segmentation_folders
from vitpe.dense.metrics import ConfusionMatrix, coco_ap, coco_results
from vitpe.dense.transforms import apply_detection, pipeline
from vitpe.errors import DataError


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    return root, write_coco(root, 4, img_size=(64, 96), split='val')


def test_coco_round_trip(coco):
    root, ann = coco
    data = CocoDetection(ann, os.path.join(root, 'val'), num_classes=4)
    assert len(data) == 4 and data.num_classes == 4
    img, t = data[0]
    assert img.shape == (3, 64, 96) and 0 <= img.min() and img.max() <= 1
    assert len(t['boxes']) == len(t['labels']) == len(t['masks']) >= 1
    assert t['labels'].min() >= 1 and t['labels'].max() <= 4
    for box, m in zip(t['boxes'], t['masks']):  # each box is tight around its mask
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_ground_truth_scores_ap_one_and_shifted_boxes_less(coco):
    root, ann = coco
    data = CocoDetection(ann, os.path.join(root, 'val'))
    preds, ids = [], []
    for i in range(len(data)):
        _, t = data[i]
        preds.append(dict(boxes=t['boxes'], labels=t['labels'], scores=torch.ones(len(t['labels'])),
                          masks=t['masks'][:, None].float()))
        ids.append(int(t['image_id']))
    perfect = coco_ap(ann, coco_results(preds, ids, data.category_of))
    assert perfect['bbox_AP'] == pytest.approx(1.0) and perfect['segm_AP'] == pytest.approx(1.0)
    for p in preds:  # shift every box by half its width: IoU 1/3, below 0.5
        w = p['boxes'][:, 2] - p['boxes'][:, 0]
        p['boxes'] = p['boxes'] + torch.stack([w / 2, 0 * w, w / 2, 0 * w], 1)
    shifted = coco_ap(ann, coco_results(preds, ids, data.category_of, masks=False), iou_types=('bbox',))
    assert shifted['bbox_AP50'] == 0.0
    assert coco_ap(ann, [])['bbox_AP'] == 0.0


def test_miou_by_hand():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    cm.update(pred, target)
    # (true, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,1); IoU = inter / (true + pred - inter):
    # class 0: 1 / (2 + 2 - 1), class 1: 3 / (3 + 4 - 3), class 2: 1 / (2 + 1 - 1)
    torch.testing.assert_close(cm.iou(), torch.tensor([1 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    assert cm.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert cm.accuracy() == pytest.approx(5 / 7)
    assert ConfusionMatrix(4).miou() == 0.0


def test_a_crop_that_drops_a_box_drops_its_label_and_mask():
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    masks = np.zeros((3, 64, 64), dtype=np.uint8)
    boxes = np.array([[2, 2, 12, 12], [40, 40, 60, 60], [20, 44, 30, 62]], dtype=np.float32)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        m[y0:y1, x0:x1] = 1
    t = pipeline('resize', (32, 32))
    out = apply_detection(t, img, boxes, np.array([1, 2, 3]), masks)
    np.testing.assert_allclose(out['boxes'], boxes / 2)
    import albumentations as A
    crop = A.Compose([A.Crop(0, 0, 36, 36)], bbox_params=t.processors['bboxes'].params)  # keeps box 0 only
    out = apply_detection(crop, img, boxes, np.array([1, 2, 3]), masks)
    assert out['labels'].tolist() == [1] and out['masks'].shape == (1, 36, 36)
    np.testing.assert_array_equal(out['masks'][0], masks[0, :36, :36])
    for seed in range(5):  # random pipelines: every kept box is its mask's box
        for name in ('rrc', 'lsj', 'flip'):
            out = apply_detection(pipeline(name, (48, 48), seed=seed), img, boxes, np.array([1, 2, 3]), masks)
            assert len(out['boxes']) == len(out['labels']) == len(out['masks'])
            for box, m in zip(out['boxes'], out['masks']):
                ys, xs = np.nonzero(m)
                # nearest-neighbour masks scaled up to 2x: a few pixels off the exactly scaled box
                np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=3)
            if name != 'flip':
                assert out['image'].shape == (48, 48, 3)


def test_lsj_pads_label_maps_with_ignore_index():
    t = pipeline('lsj', (64, 64), task='segmentation', seed=3)
    sizes = set()
    for _ in range(10):
        out = t(image=np.zeros((32, 32, 3), dtype=np.uint8), mask=np.ones((32, 32), dtype=np.uint8))
        assert out['image'].shape == (64, 64, 3) and out['mask'].shape == (64, 64)
        assert set(np.unique(out['mask'])) <= {1, 255}
        sizes.add(int((out['mask'] == 1).sum()))
    assert len(sizes) > 1  # the scale jitters


def test_segmentation_folders_round_trip(tmp_path):
    root = write_segmentation_folders(str(tmp_path), 3, img_size=(48, 64), split='val')
    data = SegmentationFolder(root, 'val', num_classes=4, transform=pipeline('resize', (32, 32), 'segmentation'))
    img, labels = data[0]
    assert img.shape == (3, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.long
    assert set(labels.unique().tolist()) - {0} and labels.max() <= 4


def _bad_coco(tmp_path, edit):
    root = str(tmp_path)
    ann = write_coco(root, 2, img_size=64, split='train')
    data = json.load(open(ann))
    edit(data, root)
    json.dump(data, open(ann, 'w'))
    return ann, os.path.join(root, 'train')


def test_bad_detection_input_is_named(tmp_path):
    def box_outside(d, root):
        d['annotations'][1]['bbox'] = [50, 50, 30, 10]
    ann, images = _bad_coco(tmp_path / 'a', box_outside)
    with pytest.raises(DataError, match=r'instances_train.json: annotation 2 \(image train_000000.png\): box'):
        CocoDetection(ann, images)

    def unknown_class(d, root):
        d['annotations'][0]['category_id'] = 9
    ann, images = _bad_coco(tmp_path / 'b', unknown_class)
    with pytest.raises(DataError, match='annotation 1 .*category_id 9 is not one of the 4 classes'):
        CocoDetection(ann, images)
    ann, images = _bad_coco(tmp_path / 'c', lambda d, root: None)
    with pytest.raises(DataError, match='category_id 4 is not one of the 3 classes'):
        CocoDetection(ann, images, num_classes=3)  # the file has 4 kinds, the model 3 classes

    def missing_image(d, root):
        os.remove(os.path.join(root, 'train', 'train_000001.png'))
    ann, images = _bad_coco(tmp_path / 'd', missing_image)
    with pytest.raises(DataError, match='image 2: file .*train_000001.png not found'):
        CocoDetection(ann, images)
    empty = tmp_path / 'empty.json'
    empty.write_text('')
    with pytest.raises(DataError, match='empty.json: the annotation file is empty'):
        CocoDetection(str(empty), str(tmp_path))
    empty.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DataError, match='holds no images'):
        CocoDetection(str(empty), str(tmp_path))


def test_bad_segmentation_input_is_named(tmp_path):
    root = write_segmentation_folders(str(tmp_path), 2, img_size=48, split='train')
    label = os.path.join(root, 'annotations', 'train', 'train_000001.png')
    Image.fromarray(np.zeros((40, 48), dtype=np.uint8)).save(label)
    with pytest.raises(DataError, match='train_000001.png: label map 48 x 40 but image train_000001.png is 48 x 48'):
        SegmentationFolder(root, 'train', 4)[1]
    Image.fromarray(np.full((48, 48), 7, dtype=np.uint8)).save(label)
    with pytest.raises(DataError, match=r'train_000001.png: label values \[7\] beyond num_classes=4'):
        SegmentationFolder(root, 'train', 4)[1]
    os.remove(label)
    with pytest.raises(DataError, match='train_000001.png: its label map .* not found'):
        SegmentationFolder(root, 'train', 4)
