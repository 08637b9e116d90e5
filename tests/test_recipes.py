"""The ImageNet recipes (configs/imagenet): each holds the published settings written in papers.yaml, names its
source and the published top-1 of its models, and builds and runs two steps on a generated image folder."""
import glob
import os
import re

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from vitpe.checkpoint import load_checkpoint
from vitpe.config import TrainConfig
from vitpe.optim import create_optimizer, drop_path_kwargs
from vitpe.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'configs', 'imagenet')
PAPERS = yaml.safe_load(open(os.path.join(FOLDER, 'papers.yaml')))
RECIPES = {name: (paper, dict(PAPERS[paper]['settings'], **overrides))
           for paper in PAPERS for name, overrides in PAPERS[paper]['recipes'].items()}


def test_every_recipe_file_is_described_in_papers_yaml():
    files = {os.path.basename(p) for p in glob.glob(os.path.join(FOLDER, '*.yaml'))} - {'papers.yaml'}
    assert files == set(RECIPES)
    zoo = set(timm.list_models('vitpe_*'))
    for paper in PAPERS.values():
        assert set(paper['published_top1']) <= zoo
        assert all(50 < top1 < 100 for top1, _ in paper['published_top1'].values())


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_holds_the_papers_settings_and_names_its_source(name):
    paper, settings = RECIPES[name]
    path = os.path.join(FOLDER, name)
    cfg = TrainConfig.from_yaml(path)
    for key, value in settings.items():
        assert getattr(cfg, key) == (pytest.approx(value) if isinstance(value, float) else value), key
    header = ''.join(line for line in open(path) if line.startswith('#'))
    assert re.search(r'# Source: .*(Touvron|Heo)', header)
    model = cfg.model or ''
    size = model.split('_')[1] if model else 'base'
    published = {m: top1 for m, (top1, _) in PAPERS[paper]['published_top1'].items() if m.split('_')[1] == size}
    for m, top1 in published.items():  # every published number of the recipe's size, in its header
        assert f'{m}: {top1}' in header, m
    if name.startswith('deit_') or name.startswith('deit3_small') or name == 'deit3_base.yaml':
        assert published and model in published  # the recipe's own model has a published number


def tiny_folder(root):
    rng = np.random.default_rng(0)
    for split, n in (('train', 4), ('val', 2)):
        for c in ('a', 'b'):
            os.makedirs(os.path.join(root, split, c))
            for i in range(n):
                img = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, split, c, f'{i}.png'))
    return root


def two_steps(name, data, output, **extra):
    """The recipe with its trunk cut to one block, at 32 px and a batch of 4, for two updates on ``data``."""
    cfg = TrainConfig.from_yaml(os.path.join(FOLDER, name))
    small = dict(data=data, output=output, img_size=32, batch_size=4, epochs=1, max_steps_per_epoch=2, workers=0,
                 amp=False, quiet=True, classes=None, model_kwargs={**cfg.model_kwargs, 'depth': 1})
    cfg = cfg.replace(**{**small, **extra})
    summary = train(cfg)
    assert summary['updates'] == 2 and np.isfinite(summary['train_loss'])
    ckpt = load_checkpoint(os.path.join(output, 'last.pth'))
    assert ckpt['config']['aa'] == cfg.aa and ckpt['config']['opt'] == cfg.opt
    return ckpt


@pytest.mark.parametrize('name', sorted(set(RECIPES) - {'deit3_base.yaml', 'deit3_base_finetune.yaml'}))
def test_recipe_runs_two_steps(name, tmp_path):
    two_steps(name, tiny_folder(str(tmp_path / 'data')), str(tmp_path / 'run'))


def test_deit3_base_pretraining_then_finetuning_run_two_steps(tmp_path):
    data = tiny_folder(str(tmp_path / 'data'))
    pre = two_steps('deit3_base.yaml', data, str(tmp_path / 'pre'))
    fine = two_steps('deit3_base_finetune.yaml', data, str(tmp_path / 'fine'), img_size=48,
                     initial_checkpoint=str(tmp_path / 'pre' / 'last.pth'))
    assert fine['model_name'] == pre['model_name'] == 'vitpe_base_patch16_rope_mixed_224'
    assert fine['img_size'] == 48 and not torch.equal(fine['model']['head.weight'], pre['model']['head.weight'])


@pytest.mark.parametrize('name,rate', [('deit3_base.yaml', 0.1), ('deit3_base_finetune.yaml', 0.2),
                                       ('deit_base.yaml', None)])
def test_deit3_recipes_drop_path_is_the_same_in_every_block(name, rate, tmp_path):
    """DeiT-III's models_v2.py gives every block the rate; DeiT (timm's ViT) ramps it linearly from 0."""
    cfg = TrainConfig.from_yaml(os.path.join(FOLDER, name))
    model = timm.create_model('vitpe_micro_patch16_64', depth=3, **drop_path_kwargs(cfg, 'vitpe_micro_patch16_64'))
    rates = [getattr(b.drop_path1, 'drop_prob', 0.0) for b in model.blocks]  # Identity at rate 0
    assert rates == pytest.approx([rate] * 3 if rate else [0.0, cfg.drop_path / 2, cfg.drop_path])


@pytest.mark.parametrize('name,eps', [('deit3_small.yaml', 1e-8), ('deit3_base.yaml', 1e-8),
                                      ('deit3_base_finetune.yaml', 1e-8), ('deit_small.yaml', 1e-8)])
def test_recipe_optimizer_epsilon(name, eps):
    """DeiT-III passes --opt-eps 1e-8 to apex's fusedlamb; timm's lamb would use 1e-6 (its default)."""
    cfg = TrainConfig.from_yaml(os.path.join(FOLDER, name))
    model = torch.nn.Linear(2, 2)
    assert create_optimizer(model, cfg).param_groups[0]['eps'] == eps
    assert create_optimizer(model, cfg.replace(opt_eps=None, opt='lamb')).param_groups[0]['eps'] == 1e-6
