"""models/README.md lists exactly the registered models, with their scheme and parameter counts."""
import pathlib

import timm

from vitpe.models import catalogue

CATALOGUE = pathlib.Path(__file__).resolve().parents[1] / 'models' / 'README.md'


def test_catalogue_in_step_with_registry():
    rows = catalogue.parse(CATALOGUE.read_text())
    names = timm.list_models('vitpe_*')
    assert sorted(rows) == sorted(names)
    for name in names:
        assert float(rows[name][4]) == round(catalogue.count_params(name) / 1e6, 2), name
        described = catalogue.describe(name)
        assert rows[name][1:4] == [described['scheme'], described['options'], described['size']], name
        assert rows[name][5] == described['img'], name
