"""models/README.md lists exactly the registered models, with their parameter counts."""
import pathlib

import timm
import torch

import vitpe

CATALOGUE = pathlib.Path(__file__).resolve().parents[1] / 'models' / 'README.md'


def test_catalogue_in_step_with_registry():
    rows = {}
    for line in CATALOGUE.read_text().splitlines():
        if line.startswith('| vitpe_'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            rows[cells[0]] = cells
    names = timm.list_models('vitpe_*')
    assert sorted(rows) == sorted(names)
    for name in names:
        with torch.device('meta'):
            model = timm.create_model(name)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert float(rows[name][4]) == round(params, 2), name
        assert rows[name][1] == vitpe.ZOO[name].get('pos_enc', 'ape (any, pos_enc=)')
