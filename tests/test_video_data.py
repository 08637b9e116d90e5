"""Clips: moving shapes in continuous time (any frame count and size), the order and direction tasks needing temporal order,
folders of frames; training a video model on clips, resuming, and the frame sweep."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vitpe.data import SyntheticClips, build_dataset, make_clip, render_clip
from vitpe.data.clips import DIRECTIONS, FrameFolder, frame_times
from vitpe.data.synthetic import COLOURS, render
from vitpe.eval import sweep
from vitpe.eval.sweep import plot_panels


def test_clips_render_at_any_frame_count_and_size():
    ds = SyntheticClips('direction', num_frames=4, img_size=(32, 48), num_samples=3)
    x, y = ds[0]
    assert x.shape == (3, 4, 32, 48) and 0 <= y < 4 and ds.classes == ['left', 'right', 'up', 'down']
    clip = ds.clip(0)
    for frames in (2, 5, 16):
        video = render_clip(clip, frames, (40, 40))
        assert video.shape == (3, frames, 40, 40)
        # frame k of T shows the clip at time (k + 0.5) / T: positions move continuously, p(t) = p_0 + t v
        k = frames - 1
        torch.testing.assert_close(video[:, k], render(clip.at((k + 0.5) / frames), (40, 40)))
    assert frame_times(4) == [0.125, 0.375, 0.625, 0.875]
    # the same index is the same clip at another frame count and size
    assert SyntheticClips('direction', 2, 32, 3).clip(1) == SyntheticClips('direction', 16, 96, 3).clip(1)
    assert SyntheticClips('direction', 2, 32, 3, split='val').clip(1) != ds.clip(1)


@pytest.mark.parametrize('seed', [0, 1, 2, 3, 7])
def test_direction_needs_temporal_order(seed):
    """A clip played backwards is a clip of the opposite direction: the same frames in reverse order with another
    label. So no single frame (nor the set of frames) reveals the answer; only their order does."""
    clip = make_clip('direction', seed)
    dx, dy = DIRECTIONS[clip.label]
    vx, vy = clip.velocities[0]  # the red shape moves along its label's direction, 0.3-0.5 of the image
    assert 0.3 <= vx * dx + vy * dy <= 0.5 and abs(vx * dy - vy * dx) < 1e-9
    back = clip.reversed()
    assert back.label == {0: 1, 1: 0, 2: 3, 3: 2}[clip.label]
    forward, backward = render_clip(clip, 8, (48, 48)), render_clip(back, 8, (48, 48))
    torch.testing.assert_close(backward, forward.flip(1), atol=1e-4, rtol=0)
    for t in (0.0, 1.0):  # every shape stays inside the image over the whole clip
        for s in clip.at(t).shapes:
            assert s.radius - 1e-9 <= s.cx <= 1 - s.radius + 1e-9 and s.radius - 1e-9 <= s.cy <= 1 - s.radius + 1e-9


def seen(clip, colour, frames):
    """The frames (of ``frames``) in which the shape of ``colour`` is seen."""
    return [k for k, t in enumerate(frame_times(frames)) if any(s.colour == COLOURS[colour] for s in clip.at(t).shapes)]


@pytest.mark.parametrize('seed', [0, 1, 2, 3, 7])
def test_order_needs_the_order_of_distant_frames(seed):
    """Red or blue first: played backwards, a clip is one of the other label (the same frames, reversed); each of
    the two is seen in one run of frames, never in the first or last frame, and at 4 frames or more the first
    frames of the two differ, so the label is in every frame count the study tests; the others are always seen."""
    clip = make_clip('order', seed)
    back = clip.reversed('order')
    assert back.label == 1 - clip.label
    forward, backward = render_clip(clip, 8, (32, 32)), render_clip(back, 8, (32, 32))
    torch.testing.assert_close(backward, forward.flip(1), atol=1e-4, rtol=0)
    n = len(clip.scene.shapes)
    for frames in (4, 8, 16, 32):
        red, blue = seen(clip, 'red', frames), seen(clip, 'blue', frames)
        for run in (red, blue):
            assert run and run == list(range(run[0], run[-1] + 1)) and 0 < run[0] and run[-1] < frames - 1
        assert (red[0] > blue[0]) == bool(clip.label) and red[0] != blue[0]
        assert abs(len(red) - len(blue)) <= 1  # windows of one length: the count of frames says nothing
        assert all(len(clip.at(t).shapes) >= n - 2 for t in frame_times(frames))
    others = [s.colour for s in clip.scene.shapes[2:]]
    assert COLOURS['red'] not in others and COLOURS['blue'] not in others


def test_order_task_is_symmetric_in_time_over_the_data():
    """Not only is each clip played backwards a clip of the other label: the generator draws a clip and its
    reversal alike, so when (and how long) the first and the second shape are seen has the same distribution
    under both labels and mirrored in time (a frame's content and time index tell only together)."""
    clips = [make_clip('order', s) for s in range(6000)]
    first, second = {0: [], 1: []}, {0: [], 1: []}
    for clip in clips:
        (red, blue) = clip.windows[:2]
        early, late = (red, blue) if clip.label == 0 else (blue, red)
        first[clip.label].append(early)
        second[clip.label].append(late)
    def close(a, b):  # means within 4 standard errors of their difference
        return abs(a.mean() - b.mean()) < 4 * np.sqrt(a.var() / len(a) + b.var() / len(b))

    for label in (0, 1):
        starts = np.array([a for a, _ in first[label]])
        mirrored = np.array([1 - b for _, b in second[label]])  # the second shape's end, seen backwards
        assert close(starts, mirrored) and abs(starts.std() - mirrored.std()) < 0.01
    for which in (first, second):
        assert close(*(np.array([w[0] for w in which[label]]) for label in (0, 1)))


def test_control_task_and_label_balance():
    kinds = [make_clip('kind', s) for s in range(8)]
    for clip in kinds:  # the kind of the red shape: any frame shows it, reversing changes nothing
        assert clip.label == clip.scene.categories[0] and clip.reversed('kind').label == clip.label
    labels = np.bincount([make_clip('direction', s).label for s in range(400)], minlength=4)
    assert labels.min() > 70  # about 100 of each direction
    assert 170 < sum(make_clip('order', s).label for s in range(400)) < 230  # about 200 of each
    assert SyntheticClips().classes == ['red_first', 'blue_first']  # the default task
    with pytest.raises(ValueError, match="unknown clip task 'speed'"):
        make_clip('speed', 0)


def write_frame_folder(root, classes=('a', 'b'), clips=2, frames=10):
    """root/<class>/clip<c>/<k>.png: frame k a flat grey of value 20 k."""
    for cls in classes:
        for c in range(clips):
            folder = root / cls / f'clip{c}'
            folder.mkdir(parents=True)
            for k in range(frames):
                Image.fromarray(np.full((12, 16, 3), 20 * k, np.uint8)).save(folder / f'{k:03d}.png')


def test_frame_folders(tmp_path):
    """root/class/clip/*.png, frames in name order, T frames sampled evenly over the clip."""
    write_frame_folder(tmp_path)
    ds = build_dataset(str(tmp_path), (4, 8, 8), 'test')  # an evaluation folder: all of it
    assert isinstance(ds, FrameFolder) and ds.classes == ['a', 'b'] and len(ds) == 4 and ds.targets == [0, 0, 1, 1]
    x, y = ds[3]
    assert x.shape == (3, 4, 8, 8) and y == 1
    grey = (x[0, :, 0, 0] * 0.229 + 0.485) * 255  # frames at (k + 0.5) / 4 of 10: 1, 3, 6, 8
    torch.testing.assert_close(grey, torch.tensor([20., 60., 120., 160.]), atol=0.6, rtol=0)
    assert build_dataset(str(tmp_path), (4, 8, 8), 'test', classes=['b']).targets == [0, 0]  # a checkpoint's classes
    with pytest.raises(ValueError, match=r"clip data \('clips:direction'\) needs a clip size \(frames, height, "
                                         r"width\), got \(32, 32\)"):
        build_dataset('clips:direction', 32, 'train')
    with pytest.raises(ValueError, match="holds no clips: expected root/class/clip/<frames>.png"):
        build_dataset(str(tmp_path / 'a'), (4, 8, 8), 'test')
    write_frame_folder(tmp_path / 'clips_ucf')  # a folder whose name starts like the built-in clips is a folder
    assert isinstance(build_dataset(str(tmp_path / 'clips_ucf'), (4, 8, 8), 'test'), FrameFolder)
    from vitpe.data.synthetic import builtin_kind
    assert [builtin_kind(s) for s in ('clips', 'clips:order', 'synthetic:kind', 'clips_ucf', 'synthetic_data/x')] \
        == ['clips', 'clips', 'synthetic', None, None]
    with pytest.raises(ValueError, match=r"classes \['c'\] are not folders of"):
        build_dataset(str(tmp_path), (4, 8, 8), 'test', classes=['a', 'c'])
    with pytest.raises(ValueError, match=r"'synthetic:position' renders images; a video model \(clips of 4 frames\) "
                                         r"needs clips: --data clips:<order\|direction\|kind>"):
        build_dataset('synthetic:position', (4, 32, 32), 'train')


def test_frame_folder_splits_as_image_folders(tmp_path):
    """A folder of clips is split as an image folder is: its val/, else a held-out part of each class
    (--val-fraction; without one: refused, not validated on its training clips); a sample count draws clips at
    random, not the first classes."""
    write_frame_folder(tmp_path / 'flat', classes=('a', 'b', 'c', 'd'), clips=5, frames=2)
    flat = str(tmp_path / 'flat')
    with pytest.raises(ValueError, match="has no val/ folder: validating on the training data would measure nothing"):
        build_dataset(flat, (2, 8, 8), 'train')
    train = build_dataset(flat, (2, 8, 8), 'train', val_fraction=0.2, split_seed=3)
    val = build_dataset(flat, (2, 8, 8), 'val', val_fraction=0.2, split_seed=3)
    assert len(train) == 16 and len(val) == 4 and not set(train.indices) & set(val.indices)
    assert sorted(val.dataset.targets[i] for i in val.indices) == [0, 1, 2, 3]  # one clip of each class held out
    some = build_dataset(flat, (2, 8, 8), 'train', 8, seed=0, val_fraction=0.2, split_seed=3)
    assert len(some) == 8 and len({some[i][1] for i in range(8)}) > 2  # not the first two classes' clips
    write_frame_folder(tmp_path / 'split' / 'train')
    write_frame_folder(tmp_path / 'split' / 'val', clips=1)
    assert len(build_dataset(str(tmp_path / 'split'), (2, 8, 8), 'val')) == 2
    with pytest.raises(ValueError, match="has a val/ folder; --val-fraction 0.2 would hold out a second"):
        build_dataset(str(tmp_path / 'split'), (2, 8, 8), 'train', val_fraction=0.2)


def test_train_and_sweep_on_a_folder_of_frames(tmp_path, tool):
    """tools/train.py on root/class/clip/*.png with a held-out part (--val-fraction) and a class subset, then a
    frame sweep of exactly those held-out clips of those classes; image options are refused for clips (nothing
    would apply them), --protocol resize for a clip sweep too."""
    write_frame_folder(tmp_path / 'data', classes=('a', 'b', 'c'), clips=4, frames=8)
    args = ['--model', 'vitpe_micro_patch16_rope_axial_video_8x64', '--model-kwargs', json.dumps({'depth': 1}),
            '--data', str(tmp_path / 'data'), '--img-size', '32', '--num-frames', '4', '--epochs', '1',
            '--batch-size', '2', '--warmup-steps', '1', '--quiet', '--output', str(tmp_path / 'run'),
            '--val-fraction', '0.25', '--classes', 'c', 'b']
    assert tool('train').main(args) == 0
    best = str(tmp_path / 'run' / 'last.pth')
    ckpt = torch.load(best, weights_only=True)
    assert ckpt['classes'] == ['c', 'b'] and ckpt['config']['num_frames'] == 4
    records = sweep([best], [32], frames=[2, 4], progress=False)
    assert [(r.frames, r.n) for r in records] == [(2, 2), (4, 2)]  # one held-out clip of each of its two classes
    with pytest.raises(ValueError, match=r"--protocol resize applies to image folders; '.*data' holds clips "
                                         r"\(resized whole\)"):
        sweep([best], [32], frames=[4], protocol='resize', progress=False)
    with pytest.raises(ValueError, match=r"--protocol resize applies to image folders; 'clips:order' holds "
                                         r"built-in data"):
        sweep([best], [32], frames=[4], protocol=['crop', 'resize'], data='clips:order', progress=False)
    with pytest.raises(ValueError, match=r"\['hflip'\] apply to image folders; folders of clips are resized whole, "
                                         r"not augmented or cropped"):
        tool('train').main(args + ['--hflip', '0.0'])
    with pytest.raises(ValueError, match=r"\['val_fraction', 'classes'\] apply to image folders; the built-in data "
                                         r"\(clips:order\) is rendered"):
        tool('train').main(args[:5] + ['clips:order'] + args[6:])


def test_train_resume_and_frame_sweep_on_clips(tmp_path, tool, monkeypatch):
    """A tiny video model trains on built-in clips (the same checkpoints, logs and resume as images) and the
    sweep evaluates it at several frame counts, writing the table, CSV and plot."""
    out = tmp_path / 'run'
    args = ['--model', 'vitpe_micro_patch16_rope_axial_video_8x64', '--model-kwargs', json.dumps({'depth': 1}),
            '--data', 'clips:direction', '--img-size', '32', '--num-frames', '4', '--train-samples', '32',
            '--val-samples', '16', '--batch-size', '16', '--warmup-steps', '1', '--output', str(out), '--quiet']
    assert tool('train').main(args + ['--epochs', '1']) == 0
    assert tool('train').main(args + ['--epochs', '2', '--resume']) == 0
    rows = (out / 'log.csv').read_text().splitlines()
    assert len(rows) == 3 and rows[2].startswith('2,')
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert ckpt['model_kwargs'] == {'depth': 1, 'num_frames': 4} and ckpt['config']['num_frames'] == 4
    assert ckpt['model']['patch_embed.proj.weight'].shape == (128, 3, 2, 16, 16)
    # resumed without --num-frames (its model arguments given again): it goes on with its 4-frame clips
    no_frames = [a for i, a in enumerate(args) if a != '--num-frames' and args[i - 1] != '--num-frames']
    assert tool('train').main(no_frames + ['--epochs', '3', '--resume']) == 0
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert ckpt['epoch'] == 2 and ckpt['config']['num_frames'] == 4 and ckpt['model_kwargs']['num_frames'] == 4

    sweep_dir = tmp_path / 'sweep'
    import vitpe.eval.summary as summary
    panels = []  # the diagnostics plot's title and axis, spied on
    monkeypatch.setattr(summary, 'plot_panels', lambda *a, **k: panels.append((a[2], k)) or plot_panels(*a, **k))
    assert tool('eval_resolution').main(['--checkpoint', str(out / 'best.pth'), '--resolutions', '32', '--frames',
                                         '2', '4', '8', '--strategy', 'none', 'riflex', '--samples', '8',
                                         '--diagnostics', '--output', str(sweep_dir)]) == 0
    assert panels == [('Attention diagnostics against test frames',
                       dict(xlabel='test frames', train_name='training frames'))]
    assert os.path.getsize(sweep_dir / 'diagnostics.png') > 0
    table = (sweep_dir / 'results.md').read_text()
    assert '| 2 frames | 4 frames | 8 frames |' in table
    assert table.count('*') == 2  # the training clip (4 frames) marked on both rows
    csv_rows = [r for r in (sweep_dir / 'results.csv').read_text().splitlines() if not r.startswith('#')]
    assert len(csv_rows) == 1 + 6 and 'frames,train_frames' in csv_rows[0] and 'entropy_norm_l0' in csv_rows[0]
    assert os.path.getsize(sweep_dir / 'resolution.png') > 0
    assert tool('eval_resolution').main(['--checkpoint', str(out / 'best.pth'), '--resolutions', '32', '--frames',
                                         '3', '--output', str(sweep_dir)]) == 2  # 3 frames: not a tubelet multiple


TINY_VIDEO_STUDY = """
task: clips:order
model: vitpe_micro_patch16_{scheme}_video_8x64
model_kwargs: {depth: 1, embed_dim: 32, num_heads: 2}
schemes: [none, rope_axial]
train: {img_size: 32, num_frames: 4, epochs: 1, train_samples: 16, val_samples: 8, batch_size: 8, warmup_steps: 1}
resolutions: [32]
frames: [2, 4, 8]
eval_samples: 8
strategy_schemes: [rope_axial]
seeds: 1
"""


def test_tiny_video_study(tmp_path, tool, capsys):
    """tools/study.py runs a video study (configs/study_video_*.yaml) and summarises it along frames."""
    import yaml
    shipped = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs',
                                               'study_video_order_8x32.yaml')))
    assert tool('study').plan_runs(dict(shipped, source='shipped'), str(tmp_path / 'plan'))[0].config.num_frames == 8
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_VIDEO_STUDY)
    assert tool('study').main(['--config', str(config), '--output', str(tmp_path / 'out')]) == 0
    printed = capsys.readouterr().out
    assert 'Resolution study: 2 schemes on clips:order, trained at 32 px, 4 frames, 0 control runs' in printed
    table = (tmp_path / 'out' / 'results.md').read_text()
    assert '| 2 frames | 4 frames | 8 frames |' in table
    rows = {line.split('|')[1].strip().replace(' (not learned)', '') + '/' + line.split('|')[3].strip()
            for line in table.splitlines()[2:]}  # one epoch learns nothing: every label is marked
    assert {'none/none', 'rope_axial/none', 'rope_axial/riflex', 'rope_axial/ntk_t', 'rope_axial/pi_t'} <= rows
    assert all(line.count('*') == 1 for line in table.splitlines()[2:])  # the training clip: 4 frames


def test_fine_tune_an_image_checkpoint_on_clips(tmp_path, tool, capsys):
    """--initial-checkpoint of an image run starts a video run: the checkpoint is inflated on load."""
    import timm
    image = timm.create_model('vitpe_micro_patch16_rope_mixed_64', num_classes=4, depth=1)
    path = tmp_path / 'image.pth'
    torch.save({'format': 'vitpe-train-2', 'model': image.state_dict(), 'model_name': 'vitpe_micro_patch16_rope_mixed_64',
                'model_kwargs': {'depth': 1}, 'img_size': 64, 'num_classes': 4}, path)
    out = tmp_path / 'video'
    assert tool('train').main(['--initial-checkpoint', str(path), '--model', 'vitpe_micro_patch16_rope_mixed_video_8x64',
                               '--data', 'clips:order', '--img-size', '32', '--num-frames', '4', '--epochs', '1',
                               '--train-samples', '16', '--val-samples', '8', '--batch-size', '8', '--lr', '1e-9',
                               '--warmup-steps', '1', '--output', str(out), '--quiet']) == 0
    video = torch.load(out / 'last.pth', weights_only=True)['model']
    assert video['pos_enc.freqs'].shape == (3, 1, 4, 16) and video['patch_embed.proj.weight'].shape[2] == 2
    kernel = video['patch_embed.proj.weight']  # central-frame inflation, then two updates of lr at most 1e-5
    torch.testing.assert_close(kernel[:, :, 1], image.patch_embed.proj.weight.detach(), atol=1e-4, rtol=0)
    assert kernel[:, :, 0].abs().max() < 1e-4 < image.patch_embed.proj.weight.abs().max()
    # --inflation average: the kernel / t on each frame of the tubelet (I3D)
    args = ['--initial-checkpoint', str(path), '--model', 'vitpe_micro_patch16_rope_mixed_video_8x64', '--data',
            'clips:order', '--img-size', '32', '--num-frames', '4', '--epochs', '1', '--train-samples', '16',
            '--val-samples', '8', '--batch-size', '8', '--lr', '1e-9', '--warmup-steps', '1', '--quiet']
    assert tool('train').main(args + ['--inflation', 'average', '--output', str(tmp_path / 'avg')]) == 0
    kernel = torch.load(tmp_path / 'avg' / 'last.pth', weights_only=True)['model']['patch_embed.proj.weight']
    for frame in (0, 1):
        torch.testing.assert_close(kernel[:, :, frame], image.patch_embed.proj.weight.detach() / 2, atol=1e-4, rtol=0)
    from vitpe.config import TrainConfig, check_values
    with pytest.raises(ValueError, match="inflation must be 'central' or 'average', got 'middle'"):
        check_values(TrainConfig(inflation='middle'))
    # frame counts for an image checkpoint: a clear error, not a sweep that ignores them
    assert tool('eval_resolution').main(['--checkpoint', str(path), '--resolutions', '64', '--frames', '4', '8',
                                         '--output', str(tmp_path / 'sweep')]) == 2
    assert f"frame counts [4, 8] apply to video checkpoints; {path} holds an image model" in capsys.readouterr().err


def test_video_files_through_pyav(tmp_path):
    av = pytest.importorskip('av')
    for cls in ('a', 'b'):
        (tmp_path / cls).mkdir()
        with av.open(str(tmp_path / cls / 'clip.mkv'), 'w') as out:
            stream = out.add_stream('ffv1', rate=10)
            stream.width, stream.height, stream.pix_fmt = 16, 12, 'yuv444p'
            for k in range(10):  # frame k is a flat grey of value 20 k
                frame = av.VideoFrame.from_ndarray(np.full((12, 16, 3), 20 * k, np.uint8), format='rgb24')
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    ds = build_dataset(str(tmp_path), (4, 8, 8), 'test')
    assert type(ds).__name__ == 'VideoFolder' and ds.classes == ['a', 'b'] and len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 4, 8, 8) and y == 1
    grey = (x[0, :, 0, 0] * 0.229 + 0.485) * 255  # frames 1, 3, 6, 8 of 10, as for folders of frames
    torch.testing.assert_close(grey, torch.tensor([20., 60., 120., 160.]), atol=3, rtol=0)
