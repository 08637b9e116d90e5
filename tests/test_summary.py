"""The study's aggregation over seeds (vitpe.eval.summary) on hand-made records, the table's mark of runs that did
not learn, and the sweeps a study stores beside each checkpoint (vitpe.eval.stored)."""
import json
import os
import statistics

import pytest

from vitpe.eval import Record, summarize, summary_markdown
from vitpe.eval.stored import read_stored, sweep_key, write_stored


def record(label, seed, res, acc, strategy='none', entropy=None):
    diagnostics = None if entropy is None else {'entropy': [entropy, entropy + 1], 'entropy_norm': [0.5, 0.7],
                                                 'distance': [1.0, 3.0]}
    return Record(checkpoint=f'{label}/seed{seed}/best.pth', label=label, model='m', scheme=label.split('-')[0],
                  train_res=64, res=res, strategy=strategy, acc=acc, loss=0.0, n=512, imgs_per_s=1.0,
                  peak_mem_mb=0.0, device='cpu', seed=seed, diagnostics=diagnostics)


def test_summarize_gives_mean_spread_range_and_counts_per_cell():
    accs = {(64, 0): 0.9, (64, 1): 1.0, (64, 2): 0.95, (128, 0): 0.2, (128, 1): 0.6}  # seed 2 lacks 128 px
    records = [record('ape', seed, res, acc, entropy=seed) for (res, seed), acc in accs.items()]
    records.append(record('ape', 0, 64, 0.5, strategy='pi'))
    rows = {(r.label, r.strategy, r.res): r for r in summarize(records)}
    assert list(rows) == [('ape', 'none', 64), ('ape', 'none', 128), ('ape', 'pi', 64)]  # the records' order
    at64 = rows[('ape', 'none', 64)]
    assert (at64.mean, at64.min, at64.max, at64.n_seeds) == (pytest.approx(0.95), 0.9, 1.0, 3)
    assert at64.std == pytest.approx(statistics.stdev([0.9, 1.0, 0.95]))  # sample std, ddof = 1
    assert at64.std == pytest.approx(0.05)
    at128 = rows[('ape', 'none', 128)]
    assert (at128.mean, at128.n_seeds) == (pytest.approx(0.4), 2) and at128.std == pytest.approx(0.2 * 2 ** 0.5)
    assert rows[('ape', 'pi', 64)].std is None and rows[('ape', 'pi', 64)].n_seeds == 1  # one seed: no spread
    # diagnostics: the mean over layers, then over the seeds (entropy of seed k: k and k + 1 over two layers)
    assert at64.entropy == pytest.approx(statistics.fmean([0.5, 1.5, 2.5])) and at64.entropy_norm == pytest.approx(0.6)
    assert at64.distance == pytest.approx(2.0) and rows[('ape', 'pi', 64)].entropy is None
    table = summary_markdown(list(rows.values()))
    assert '| ape | ape | none | 64 | 2 | 0.950 ± 0.050* | 0.400 ± 0.283 |' in table  # seeds: the fewest in a row
    assert '| ape | ape | pi | 64 | 1 | 0.500* |  |' in table


def test_the_table_marks_runs_that_did_not_learn():
    rows = summarize([record('ape', 0, 64, 0.99), record('none', 0, 64, 0.3), record('none-kind', 0, 64, 0.97)])
    table = summary_markdown(rows, unlearned=['none'])
    assert '| none (not learned) | none |' in table and '| ape | ape |' in table
    assert '| none-kind | none |' in table  # the mark is per label


def test_stored_sweeps_come_back_only_for_the_same_sweep_of_the_same_weights(tmp_path):
    ckpt = tmp_path / 'best.pth'
    ckpt.write_bytes(b'weights')
    kwargs = dict(checkpoints=[str(ckpt)], resolutions=[32, 64], strategies=('none',), samples=16, frames=None)
    key = sweep_key(kwargs)
    path = str(tmp_path / 'sweep.json')
    assert read_stored(path, key) is None  # nothing stored yet
    records = [record('ape', 0, 32, 0.5, entropy=1.0), record('ape', 0, 64, 0.75)]
    write_stored(path, key, records)
    assert read_stored(path, sweep_key(dict(kwargs))) == records  # Records again, diagnostics included
    assert read_stored(path, sweep_key(dict(kwargs, resolutions=[32, 96]))) is None  # another sweep
    ckpt.write_bytes(b'weights of a retrained run')
    assert read_stored(path, sweep_key(kwargs)) is None  # other weights at the same path
    ckpt.write_bytes(b'weights')
    stored = json.loads(open(path).read())
    open(path, 'w').write(json.dumps(stored)[:40])  # a write cut short
    assert read_stored(path, key) is None
    assert not list(tmp_path.glob('*.tmp*'))  # written through a temporary file, renamed


def test_plots_tell_more_than_twenty_checkpoints_apart():
    from vitpe.eval.sweep import line_look
    looks = [line_look(i) for i in range(45)]
    assert len(set(looks)) == 45  # the full study plots 21 checkpoints: tab20's colours alone repeat
    assert looks[0][0] == looks[20][0] and looks[0][1] != looks[20][1]


def test_plot_legend_of_many_lines_fits_in_the_image(tmp_path, monkeypatch):
    """A study's 40+ lines (checkpoints x strategies) once ran the legend off the image: it must fit whole."""
    import matplotlib.figure
    import matplotlib.image
    from vitpe.eval.sweep import plot_lines
    saved = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig',
                        lambda fig, *a, **k: saved.append((fig, k.get('dpi'))) or save(fig, *a, **k))
    lines = {(f'checkpoint_{i}', 'none'): (64, {32: (0.5, None, None), 64: (0.9, None, None)}) for i in range(60)}
    plot_lines(lines, str(tmp_path / 'many.png'))
    fig, dpi = saved[0]
    legend = fig.axes[0].get_legend()
    assert len(legend.get_texts()) == 60
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    extent = legend.get_window_extent(FigureCanvasAgg(fig).get_renderer())  # the figure is closed: a new canvas
    height, width = matplotlib.image.imread(tmp_path / 'many.png').shape[:2]
    scale = dpi / fig.dpi  # the extent at the figure's own dpi, the image at the saving dpi
    assert extent.height * scale <= height and extent.width * scale <= width
    plot_lines({}, str(tmp_path / 'empty.png'))  # nothing to plot (every run failed): an empty plot, not an error
    assert os.path.getsize(tmp_path / 'empty.png') > 0
