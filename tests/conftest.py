import os

import pytest
import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    # one intra-op thread per xdist worker: the workers already use the cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tool():
    """The scripts under tools/ as modules (tools/ is not a package): ``tool('train').main(argv)``."""
    import importlib.util
    loaded = {}

    def load(name):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f'tools_{name}', os.path.join(ROOT, 'tools', f'{name}.py'))
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]
    return load
