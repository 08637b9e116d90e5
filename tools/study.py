#!/usr/bin/env python
"""The resolution study (README's main job): train a tiny model per positional scheme on the built-in
position task at a small resolution, then evaluate every one at resolutions from 0.75x to 2.5x the
training size with no fine-tuning, and print the table and write the plot.

    python tools/study.py --config configs/study_position_64.yaml --output study

Interrupted? Run the same command again: finished runs are kept, a run in progress resumes from
its last finished epoch.
"""
import argparse
import json
import os
import sys
import time

import yaml
from tqdm import tqdm

from vitpe.eval import sweep, to_markdown, write_results
from vitpe.training import load_checkpoint, parse_args, train


def run_done(folder: str, epochs: int) -> bool:
    path = os.path.join(folder, 'last.pth')
    return os.path.exists(path) and load_checkpoint(path)['epoch'] + 1 >= epochs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', default='configs/study_position_64.yaml')
    ap.add_argument('--output', default='study')
    ap.add_argument('--schemes', nargs='+', help='override the config: only these schemes')
    args = ap.parse_args(argv)
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    schemes = args.schemes or cfg['schemes']
    runs = [(f"{s}", s, cfg['task']) for s in schemes]
    runs += [(f"{s}-{task.split(':')[1]}", s, task) for task, ss in cfg.get('controls', {}).items() for s in ss]
    t0 = time.time()
    outer = tqdm(runs, desc='study: training', unit='run')
    for name, scheme, task in outer:
        outer.set_postfix(run=name)
        folder = os.path.join(args.output, 'runs', name)
        if run_done(folder, cfg['train']['epochs']):
            continue
        train_argv = ['--model', f"{cfg['model_prefix']}_{scheme}_224", '--model-kwargs', json.dumps(cfg['model']),
                      '--data', task, '--output', folder, '--resume', '--quiet']
        for key, value in cfg['train'].items():
            train_argv += [f"--{key.replace('_', '-')}", str(value)]
        summary = train(parse_args(train_argv))
        tqdm.write(f"{name}: val_acc {summary['val_acc']:.3f} at {cfg['train']['img_size']} px "
                   f"({(time.time() - t0) / 60:.1f} min so far)")
    main_runs = [r for r in runs if r[2] == cfg['task']]
    ckpts = [os.path.join(args.output, 'runs', name, 'best.pth') for name, _, _ in runs]
    labels = [name for name, _, _ in runs]
    res = cfg['resolutions']
    records = sweep(ckpts, res, ['none'], samples=cfg['eval_samples'], labels=labels)
    if cfg.get('strategy_schemes'):
        chosen = [(c, l) for c, l, (name, s, task) in zip(ckpts, labels, runs)
                  if s in cfg['strategy_schemes'] and task == cfg['task']]
        extra = sweep([c for c, _ in chosen], res, ['all'], samples=cfg['eval_samples'], labels=[l for _, l in chosen])
        records += [r for r in extra if r.strategy != 'none']
    paths = write_results(records, args.output)
    print(f"\nResolution study: {len(main_runs)} schemes on {cfg['task']}, trained at {cfg['train']['img_size']} px, "
          f"{len(runs) - len(main_runs)} control runs; {(time.time() - t0) / 60:.1f} min\n")
    print(to_markdown(records))
    print('wrote ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
