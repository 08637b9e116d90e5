"""Adding a scheme is one class: a scheme defined only in a test file (``toy_scheme.py``) appears in
``timm.list_models``, passes the contract tests and shows in the catalogue, without editing any other file.
It runs in its own processes, so the toy never leaks into this process's registry."""
import os
import re
import subprocess
import sys

import timm

import vitpe

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]), OMP_NUM_THREADS='1')
ENV.pop('PYTEST_XDIST_WORKER', None)


def test_a_scheme_defined_in_a_test_file_passes_the_contract_and_reaches_the_catalogue():
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'toy_scheme', '-p', 'no:cacheprovider',
                           os.path.join(TESTS, 'test_contract.py'), os.path.join(TESTS, 'test_benchmark.py'),
                           os.path.join(TESTS, 'test_video_models.py'),
                           '-k', 'toy'], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed = int(re.search(r'(\d+) passed', proc.stdout).group(1))
    # contract of vitpe_{micro,tiny}_patch16_toy_*, video trunk, gradient checkpointing, compile, SDPA mask, the
    # video contract of vitpe_micro_patch16_toy_video_8x64 and its one-frame equality with the image model
    assert passed >= 8, proc.stdout[-2000:]

    code = ('import timm, toy_scheme; from vitpe.models import catalogue; '
            'names = timm.list_models("vitpe_*toy*"); print(names); print(catalogue.row(names[0]))')
    proc = subprocess.run([sys.executable, '-c', code], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("['vitpe_micro_patch16_toy_64', 'vitpe_micro_patch16_toy_video_8x64', 'vitpe_tiny_patch16_toy_224', "
            "'vitpe_tiny_patch16_toy_video_8x224']") in proc.stdout
    assert re.search(r'\| vitpe_micro_patch16_toy_64 \| toy \| - \| 128 x 4 \| [\d.]+ \| 64 \| [\d.]+ \|', proc.stdout)


def test_the_toy_does_not_leak_into_this_process():
    assert 'toy' not in vitpe.list_pos_encodings() and not timm.list_models('vitpe_*toy*')
