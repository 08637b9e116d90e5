"""The dense resolution sweep (``tools/eval_dense.py``, ``vitpe.dense.sweep``): checkpoints of tools/train_det.py and
train_seg.py evaluated at other sizes, seeds of one run as one row (mean ± std), the strategies reaching the trunk's
global blocks only, bad input refused."""
import math
import os

import pytest
import torch
from PIL import Image

import vitpe  # noqa: F401
from vitpe.dense.sweep import load_dense, run_label, trunk_of
from vitpe.eval import read_csv
from vitpe.eval.strategies import apply_strategy

from helpers import micro


def train_args(out, task_args=()):
    return ['--model', 'vitpe_micro_patch16_rope_mixed_64', '--window-size', '2', '--global-blocks', '1', '3',
            '--img-size', '64', '--train-samples', '4', '--val-samples', '2', '--batch-size', '2', '--epochs', '1',
            '--channels', '32', '--head-channels', '32', '--warmup-steps', '1', '--output', str(out), '--quiet',
            *task_args]


@pytest.fixture(scope='module')
def seg_runs(tmp_path_factory, tool):
    """Two seeds of a segmenter, laid out as runs/<name>/seed<k>."""
    train_seg = tool('train_seg')
    root = tmp_path_factory.mktemp('runs')
    for seed in (0, 1):
        assert train_seg.main(train_args(root / 'rope' / f'seed{seed}', ['--seed', str(seed)])) == 0
    return root


def test_segmentation_sweep_table_csv_and_plot(seg_runs, tmp_path, tool):
    eval_dense = tool('eval_dense')
    ckpts = [str(seg_runs / 'rope' / f'seed{s}' / 'best.pth') for s in (0, 1)]
    out = tmp_path / 'sweep'
    assert eval_dense.main(['--checkpoint', *ckpts, '--eval-sizes', '96', '64', '--strategy', 'none', 'pi',
                            '--samples', '3', '--output', str(out)]) == 0
    rows = read_csv(str(out / 'results.csv'))
    assert len(rows) == 2 * 2 * 2  # checkpoints x strategies x sizes
    assert {(r['label'], r['seed'], r['strategy'], r['res']) for r in rows} == {
        ('rope', str(s), st, str(r)) for s in (0, 1) for st in ('none', 'pi') for r in (64, 96)}
    assert all(r['metric'] == 'mIoU' and 0 <= float(r['score']) <= 1 and r['n'] == '3' for r in rows)
    table = (out / 'results.md').read_text().splitlines()
    body = [line for line in table if line.startswith('| rope')]
    assert len(body) == 2 and all(line.count('±') == 2 for line in body)  # one row per strategy, both sizes
    scores = [float(r['score']) for r in rows if r['strategy'] == 'none' and r['res'] == '64']
    mean, std = sum(scores) / 2, math.sqrt(sum((s - sum(scores) / 2) ** 2 for s in scores))  # stdev of two
    assert f'{mean:.3f} ± {std:.3f}*' in body[0]
    assert (out / 'resolution.png').stat().st_size > 0
    # the test scenes rendered at each size, the test split (not the training or validation scenes)
    files = sorted(os.listdir(out / 'data' / 'segmentation_3_96px' / 'images' / 'test'))
    assert files[0] == 'test_000000.png' and Image.open(out / 'data' / 'segmentation_3_96px' / 'images' / 'test' /
                                                        files[0]).size == (96, 96)


def test_strategies_act_on_global_blocks_only(seg_runs):
    """'pi' at 128 px changes what a backbone with global blocks computes; one whose blocks all attend in windows
    (the window the same at every input size) computes the same as without a strategy."""
    model, cfg = load_dense(str(seg_runs / 'rope' / 'seed0' / 'best.pth'))
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        plain = model(x)
        with apply_strategy(trunk_of(model), 'pi'):
            assert not torch.allclose(model(x), plain, atol=1e-5)
        trunk_of(model).set_windows(2, ())  # every block windowed
        plain = model(x)
        with apply_strategy(trunk_of(model), 'pi'):
            torch.testing.assert_close(model(x), plain, rtol=0, atol=0)


def test_window_blocks_are_as_trained_under_any_strategy():
    model = micro('rope_axial', window_size=2).eval()
    x = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x, strategy='pi+logit'), model(x), rtol=0, atol=0)
        model.set_windows(2, (1,))
        assert not torch.allclose(model(x, strategy='pi+logit'), model(x), atol=1e-5)


def test_detection_sweep_resizes_the_detector(tmp_path, tool, monkeypatch):
    eval_dense, train_det = tool('eval_dense'), tool('train_det')
    assert train_det.main(train_args(tmp_path / 'det', ['--detector-args', 'rpn_post_nms_top_n_train=50',
                                                        'box_batch_size_per_image=16'])) == 0
    out = tmp_path / 'sweep'
    assert eval_dense.main(['--checkpoint', str(tmp_path / 'det' / 'best.pth'), '--eval-sizes', '128',
                            '--samples', '2', '--output', str(out)]) == 0
    rows = read_csv(str(out / 'results.csv'))
    assert [(r['label'], r['seed'], r['res'], r['train_res'], r['metric']) for r in rows] == [
        ('det', '', '128', '64', 'bbox_AP50')]
    import vitpe.dense.sweep as dense_sweep_module
    seen, evaluate = [], dense_sweep_module.evaluate

    def recording(model, loader, cfg, device):  # the detector's own input resize during each evaluation
        seen.append((model.transform.min_size, model.transform.max_size, loader.dataset[0][0].shape[1:]))
        return evaluate(model, loader, cfg, device)
    monkeypatch.setattr(dense_sweep_module, 'evaluate', recording)
    records = dense_sweep_module.dense_sweep([str(tmp_path / 'det' / 'best.pth')], [96, 128], samples=2,
                                             data_dir=str(tmp_path / 'data'), progress=False)
    assert seen == [((96,), 96, (96, 96)), ((128,), 128, (128, 128))] and [r.res for r in records] == [96, 128]
    model, _ = load_dense(str(tmp_path / 'det' / 'best.pth'))
    assert model.rpn._post_nms_top_n['training'] == 50 and model.roi_heads.fg_bg_sampler.batch_size_per_image == 16


def test_detector_args_refused_for_segmentation(tmp_path, tool, capsys):
    assert tool('train_seg').main(train_args(tmp_path / 'seg', ['--detector-args', 'box_batch_size_per_image=16'])) == 2
    assert "detector_args ['box_batch_size_per_image'] are for detection, not segmentation" in capsys.readouterr().out


def test_bad_input(seg_runs, tmp_path, capsys, tool):
    eval_dense = tool('eval_dense')
    ckpt = str(seg_runs / 'rope' / 'seed0' / 'best.pth')
    assert eval_dense.main(['--checkpoint', ckpt, '--eval-sizes', '100', '--output', str(tmp_path / 'a')]) == 2
    assert 'sizes [100] are not multiples of the patch size 16' in capsys.readouterr().err
    other = tmp_path / 'cls.pth'
    torch.save({'model': {}}, other)
    assert eval_dense.main(['--checkpoint', str(other), '--eval-sizes', '64', '--output', str(tmp_path / 'b')]) == 2
    assert 'is not a vitpe dense training checkpoint' in capsys.readouterr().err
    assert eval_dense.main(['--checkpoint', ckpt, '--eval-sizes', '64', '--strategy', 'stretch']) == 2
    assert "unknown resolution strategy 'stretch'" in capsys.readouterr().err


def test_run_label():
    assert run_label('runs/det/ape/seed2/best.pth') == ('ape', 2)
    assert run_label('runs/det_ape/best.pth') == ('det_ape', None)
