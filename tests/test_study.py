"""tools/study.py on the library: TrainConfig per run, train, then the sweep; on 2 schemes at a tiny size."""
import os

import numpy as np

import pytest
import torch
from safetensors.torch import load_file

import vitpe
from vitpe.eval import read_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_STUDY = """
task: synthetic:position
model: vitpe_tiny_patch16_{scheme}_224
model_kwargs: {patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}
schemes: [none, ape]
controls:
  synthetic:kind: [ape]
train: {img_size: 32, epochs: 1, train_samples: 32, val_samples: 16, batch_size: 16, warmup_steps: 1}
resolutions: [32, 48]
eval_samples: 16
strategy_schemes: [ape]
seeds: 2
"""


def test_study_trains_sweeps_and_skips_finished_runs(tmp_path, tool, capsys):
    study = tool('study')
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_STUDY)
    out = tmp_path / 'out'
    assert study.main(['--config', str(config), '--output', str(out)]) == 0
    rows = list(read_csv(out / 'results.csv'))
    series = {(r['label'], r['strategy']) for r in rows}
    ape_strategies = {'logit', 'bicubic', 'bilinear', 'nearest'}
    assert series == {('none', 'none'), ('ape', 'none'), ('ape-kind', 'none')} | {('ape', s) for s in ape_strategies}
    assert sorted({int(r['res']) for r in rows}) == [32, 48] and len(rows) == 2 * 2 * len(series)
    assert {r['model'] for r in rows} == {'vitpe_tiny_patch16_none_224', 'vitpe_tiny_patch16_ape_224'}
    per_cell = {}
    for r in rows:
        per_cell.setdefault((r['label'], r['strategy'], int(r['res'])), {})[int(r['seed'])] = float(r['acc'])
    assert all(sorted(seeds) == [0, 1] for seeds in per_cell.values())
    summary = list(read_csv(out / 'summary.csv'))
    assert len(summary) == len(per_cell)
    for s in summary:
        accs = list(per_cell[(s['label'], s['strategy'], int(s['res']))].values())
        assert int(s['n_seeds']) == 2 and float(s['mean']) == pytest.approx(np.mean(accs))
        assert float(s['std']) == pytest.approx(np.std(accs, ddof=1))
    printed = capsys.readouterr().out
    assert 'Resolution study: 2 schemes on synthetic:position, trained at 32 px, 1 control runs, 2 seeds each' in printed
    assert '±' in printed and '±' in (out / 'results.md').read_text() and (out / 'resolution.png').exists()
    # diagnostics by default: per-layer columns (depth 1), their mean over seeds in the summary, the second plot
    assert {'entropy_l0', 'entropy_norm_l0', 'distance_l0', 'entropy_norm_mean'} <= set(rows[0])
    assert 0 < float(rows[0]['entropy_norm_l0']) <= 1 and all(s['entropy_norm'] for s in summary)
    assert (out / 'diagnostics.png').exists() and (out / 'summary.csv').read_text().startswith('# a run is one')
    learning = read_csv(out / 'learning.csv')
    assert sorted((r['label'], r['seed']) for r in learning) == sorted(
        (name, str(seed)) for name in ('none', 'ape', 'ape-kind') for seed in (0, 1))
    assert 'updates to reach 0.9, per seed' in printed
    names = [(name, seed) for name in ('none', 'ape', 'ape-kind') for seed in (0, 1)]
    stamps = {key: os.path.getmtime(out / 'runs' / key[0] / f'seed{key[1]}' / 'last.pth') for key in names}
    # one epoch on 32 scenes learns nothing: every label is marked in the resolution table
    assert '| none (not learned) | none |' in printed and '| ape (not learned) | ape |' in printed
    assert 'training time summed over every invocation' in printed
    stored = {p: os.path.getmtime(p) for p in out.glob('runs/*/seed*/sweep_*.json')}
    assert len(stored) == len(names) + 2  # as trained for each run, and ape's strategies for each seed
    first = (out / 'results.csv').read_text()
    assert study.main(['--config', str(config), '--output', str(out)]) == 0  # nothing retrained, nothing re-swept
    assert {key: os.path.getmtime(out / 'runs' / key[0] / f'seed{key[1]}' / 'last.pth') for key in names} == stamps
    assert {p: os.path.getmtime(p) for p in stored} == stored and (out / 'results.csv').read_text() == first
    assert '8 of 8 sweeps already done' in capsys.readouterr().out
    config.write_text(TINY_STUDY.replace('warmup_steps: 1', 'warmup_steps: 2'))  # another recipe, same folder
    with pytest.raises(ValueError, match=r"runs/none/seed0 holds a run of another recipe \(warmup_steps: 1 there, "
                                         r"2 now\): delete it"):
        study.main(['--config', str(config), '--output', str(out)])


def test_a_run_that_fails_leaves_the_others_in_the_tables(tmp_path, tool, capsys, monkeypatch):
    """A run stopped by a TrainingError (a non-finite loss) is reported; the others train, are swept and tabled;
    the command ends with 1."""
    from vitpe.errors import TrainingError
    study = tool('study')
    real_train = study.train

    def train(config):
        if config.model.endswith('none_224') and config.seed == 1:
            raise TrainingError('non-finite loss nan at update 2')
        return real_train(config)
    monkeypatch.setattr(study, 'train', train)
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_STUDY.replace('controls:\n  synthetic:kind: [ape]\n', '').replace('strategy_schemes: [ape]\n', ''))
    out = tmp_path / 'out'
    assert study.main(['--config', str(config), '--output', str(out), '--jobs', '1']) == 1
    printed = capsys.readouterr().out
    assert 'none seed 1: failed: non-finite loss nan at update 2' in printed
    assert '1 runs failed and are not in the tables: none seed 1' in printed
    seeds = {(r['label'], r['seed']) for r in read_csv(out / 'results.csv')}
    assert seeds == {('none', '0'), ('ape', '0'), ('ape', '1')}


def test_study_numbers_do_not_depend_on_how_many_runs_go_at_once(tmp_path, tool):
    """--jobs 2 trains and sweeps in two one-thread worker processes, --jobs 1 in this process with one thread:
    the same weights, the same records in the same order."""
    study = tool('study')
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_STUDY.replace('controls:\n  synthetic:kind: [ape]\n', ''))
    for jobs in ('1', '2'):
        assert study.main(['--config', str(config), '--output', str(tmp_path / jobs), '--jobs', jobs]) == 0
    timing = {'imgs_per_s', 'peak_mem_mb', 'checkpoint'}
    one, two = ([{k: v for k, v in r.items() if k not in timing} for r in read_csv(tmp_path / j / 'results.csv')]
                for j in ('1', '2'))
    assert len(one) == 2 * 2 * (1 + 1 + 4) and one == two  # none, ape as trained, ape with 4 strategies
    for name, seed in [('none', 0), ('ape', 1)]:
        a, b = (load_file(str(tmp_path / j / 'runs' / name / f'seed{seed}' / 'model.safetensors')) for j in '12')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        study.main(['--config', str(config), '--output', str(tmp_path / '1'), '--jobs', '0'])


def test_study_one_seed_gives_no_spread_and_seeds_are_distinct_runs(tmp_path, tool):
    study = tool('study')
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_STUDY.replace('seeds: 2', 'seeds: [5]').replace('schemes: [none, ape]', 'schemes: [ape]')
                      .replace('controls:\n  synthetic:kind: [ape]\n', '').replace('strategy_schemes: [ape]\n', ''))
    out = tmp_path / 'out'
    assert study.main(['--config', str(config), '--output', str(out)]) == 0
    summary = list(read_csv(out / 'summary.csv'))
    assert [(s['label'], s['n_seeds'], s['std']) for s in summary] == [('ape', '1', '')] * 2
    assert {r['seed'] for r in read_csv(out / 'results.csv')} == {'5'}
    assert '±' not in (out / 'results.md').read_text()
    runs = study.plan_runs(study.load_study(str(config)), str(tmp_path))
    assert [(r.name, r.seed, r.config.seed) for r in runs] == [('ape', 5, 5)]
    config.write_text(TINY_STUDY.replace('seeds: 2', 'seeds: [0, 7]'))
    runs = study.plan_runs(study.load_study(str(config)), str(tmp_path))
    assert [(r.name, r.config.seed) for r in runs[:2]] == [('none', 0), ('none', 7)]
    assert runs[1].config.output == str(tmp_path / 'runs' / 'none' / 'seed7')
    for bad in ('0', '-1', 'three', '[]', '[1, 1]', 'true'):
        config.write_text(TINY_STUDY.replace('seeds: 2', f'seeds: {bad}'))
        with pytest.raises(ValueError, match='seeds must be .*; got ' + {'three': "'three'", 'true': 'True'}.get(
                bad, bad).replace('[', r'\[').replace(']', r'\]')):
            study.plan_runs(study.load_study(str(config)), str(tmp_path))


def test_study_config_schemes_all_and_errors(tmp_path, tool):
    study = tool('study')
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_STUDY.replace('schemes: [none, ape]', 'schemes: all'))
    runs = study.plan_runs(study.load_study(str(config)), str(tmp_path))
    # every model entry with a model at the study's size: irpe and irpe_ape are two; RoPE-ViT's rope_*_ape have
    # small and base models only
    extra = {'irpe': 'irpe_ape', 'fire': 'fire_axes'}  # second model entries of a scheme
    entries = [e for name in vitpe.list_pos_encodings() for e in ([name, extra[name]] if name in extra else [name])]
    assert [r.scheme for r in runs[::2]] == entries + ['ape']
    assert [r.seed for r in runs[:2]] == [0, 1] and [r.config.seed for r in runs[:2]] == [0, 1]
    assert runs[0].config.output == str(tmp_path / 'runs' / runs[0].name / 'seed0') and runs[0].config.resume == 'auto'
    demo = study.load_study(os.path.join(ROOT, 'configs', 'study_position_64.yaml'))
    full = study.load_study(os.path.join(ROOT, 'configs', 'study_position_64_full.yaml'))
    for key in ('task', 'model', 'train', 'seeds', 'resolutions', 'eval_samples', 'diagnostics', 'diagnostic_samples',
                'threads'):
        assert demo[key] == full[key], key  # one trunk and one recipe: the demo is a subset of the full study
    assert demo['seeds'] == 3 and full['schemes'] == 'all' and set(demo['schemes']) < set(entries)
    assert max(full['resolutions']) >= 5 * full['train']['img_size'] and min(full['resolutions']) < full['train']['img_size']
    full_runs = study.plan_runs(full, 'x')
    assert len(full_runs) == 3 * (len(entries) + 2)
    ape = next(r for r in full_runs if r.scheme == 'ape')  # the first run of ape: seed 0, the zoo's micro model
    assert ape.seed == 0 and ape.config.model == 'vitpe_micro_patch16_ape_64' and ape.config.model_kwargs == {}
    assert {'alibi', 'fire', 'kerple', 'lookhere', 'xpos'} <= {r.scheme for r in full_runs}
    for text, message in [(TINY_STUDY + 'seed: 3\n', r"unknown keys \['seed'\], missing keys \[\]"),
                          (TINY_STUDY.replace('schemes: [none, ape]', 'schemes: [none, rope2d]'),
                           r"unknown: \['rope2d'\]"),
                          (TINY_STUDY.replace('epochs: 1', 'epoch: 1'), r"\(train\) has unknown keys \['epoch'\]"),
                          (TINY_STUDY.replace('_{scheme}_224', '_224'), 'must contain {scheme}'),
                          (TINY_STUDY + 'threads: 0\n', 'threads must be a positive integer .*; got 0')]:
        config.write_text(text)
        with pytest.raises(ValueError, match=message):
            study.plan_runs(study.load_study(str(config)), str(tmp_path))


def test_study_names_models_no_scheme_registered_and_reads_the_old_keys(tmp_path, tool):
    study = tool('study')
    config = tmp_path / 'study.yaml'
    config.write_text(TINY_STUDY.replace('vitpe_tiny_patch16_{scheme}_224', 'vitpe_tiny_patch16_{scheme}_ape_224'))
    with pytest.raises(ValueError, match=r"models \['vitpe_tiny_patch16_ape_ape_224', "
                                         r"'vitpe_tiny_patch16_none_ape_224'\] are not registered"):
        study.plan_runs(study.load_study(str(config)), str(tmp_path))
    old = TINY_STUDY.replace('model: vitpe_tiny_patch16_{scheme}_224\nmodel_kwargs:',
                             'model_prefix: vitpe_tiny_patch16\nmodel:')
    config.write_text(old)
    with pytest.warns(FutureWarning, match="'model_prefix' and a 'model' dict are deprecated"):
        runs = study.plan_runs(study.load_study(str(config)), str(tmp_path))
    assert runs[2].config.model == 'vitpe_tiny_patch16_ape_224' and runs[2].config.model_kwargs['embed_dim'] == 16
