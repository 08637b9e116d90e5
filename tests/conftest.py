import os

import pytest
import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    # one intra-op thread per xdist worker: the workers already use the cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
