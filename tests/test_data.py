"""The built-in scenes: deterministic, the same scene at every resolution, labels that mean what they say."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitpe.data import SyntheticShapes, TASKS, build_dataset, make_scene, render


def test_deterministic_by_seed_and_split():
    a = SyntheticShapes('position', 64, 8, split='train')
    b = SyntheticShapes('position', 64, 8, split='train')
    c = SyntheticShapes('position', 64, 8, split='test')
    for i in range(8):
        torch.testing.assert_close(a[i][0], b[i][0])
        assert a[i][1] == b[i][1]
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize('task', list(TASKS))
def test_same_scene_at_every_resolution(task):
    scene = make_scene(task, 11)
    scene.background = 'plain'  # per-pixel noise is drawn at each resolution; the scene is what must agree
    small = render(scene, (64, 64))
    big = render(scene, (128, 128))
    down = F.avg_pool2d(big[None], 2)[0]
    assert (down - small).abs().mean() < 0.01
    assert render(scene, (48, 96)).shape == (3, 48, 96)


def test_masks_and_boxes_agree():
    scene = make_scene('position', 5)
    img, masks = render(scene, (96, 80), masks=True)
    boxes = scene.boxes((96, 80))
    assert masks.shape == (3, 96, 80) and boxes.shape == (3, 4)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(ys) > 20
        assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) and ys.min() >= np.floor(y0) - 1
        assert ys.max() <= np.ceil(y1)


def test_position_labels_describe_red_against_blue():
    for seed in range(40):
        s = make_scene('position', seed)
        red, blue = s.shapes[0], s.shapes[1]
        dx, dy = red.cx - blue.cx, red.cy - blue.cy
        expected = (0 if dx < 0 else 1) if abs(dx) > abs(dy) else (2 if dy < 0 else 3)
        assert s.label == expected


def test_kind_labels_name_the_red_shape_and_quadrant_the_odd_shape_place():
    from vitpe.data.synthetic import COLOURS
    for seed in range(20):
        s = make_scene('kind', seed)
        red = [sh for sh in s.shapes if sh.colour[0] > 0.8 and sh.colour[1] < 0.3 and sh.colour[2] < 0.3]
        assert len(red) == 1 and TASKS['kind'][s.label] == red[0].kind == s.shapes[0].kind
        q = make_scene('quadrant', seed)
        kinds = [sh.kind for sh in q.shapes]
        assert kinds.count(kinds[0]) == 1
        odd = q.shapes[0]
        assert q.label == (odd.cy >= 0.5) * 2 + (odd.cx >= 0.5)


def test_labels_are_balanced():
    labels = [SyntheticShapes('position', 16, 400)[i][1] for i in range(400)]
    counts = np.bincount(labels, minlength=4)
    assert counts.min() > 60


def test_bad_data_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic task 'colour'"):
        build_dataset('synthetic:colour', 64, 'train')
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset(str(tmp_path / 'missing'), 64, 'train')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        build_dataset(str(tmp_path / 'empty'), 64, 'train')


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    from PIL import Image
    from vitpe.data import collate_skip_none
    for cls in ('a', 'b'):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / cls / f'{i}.png')
    (tmp_path / 'a' / 'broken.png').write_bytes(b'not an image')
    ds = build_dataset(str(tmp_path), 32, 'test')  # a flat folder: the evaluation set as a whole
    with pytest.warns(UserWarning, match='skipping unreadable image .*broken.png'):
        batch = collate_skip_none([ds[i] for i in range(len(ds))])
    assert ds.num_corrupt == 1 and batch[0].shape == (4, 3, 32, 32)


def test_position_tasks_use_position_free_backgrounds():
    for seed in range(60):
        assert make_scene('position', seed).background in ('plain', 'noise')
        assert make_scene('quadrant', seed).background in ('plain', 'noise')
    assert {make_scene('kind', s).background for s in range(60)} == {'plain', 'gradient', 'texture', 'noise'}
