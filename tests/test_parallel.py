"""vitpe.parallel: jobs in worker processes, results by index, and workers that end with the process that
started them (a killed study must not leave a worker training a run that the next invocation resumes)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vitpe.parallel import run_jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_jobs_returns_every_result_by_index_in_and_out_of_process():
    items = [3, 1, 2]
    for jobs in (1, 2):
        got = dict(run_jobs(abs, [-i for i in items], jobs, 1, 'test', 'job'))
        assert got == {0: 3, 1: 1, 2: 2}
    with pytest.raises(ValueError, match='jobs and threads must be at least 1; got jobs=0'):
        list(run_jobs(abs, items, 0, 1, 'test', 'job'))


def test_a_job_that_fails_as_expected_is_a_result_and_the_others_go_on():
    for jobs in (1, 2):
        got = dict(run_jobs(int, ['1', 'x', '3'], jobs, 1, 'test', 'job', catch=(ValueError,)))
        assert got[0] == 1 and got[2] == 3 and isinstance(got[1], ValueError) and "'x'" in str(got[1])
        with pytest.raises(ValueError, match="invalid literal for int"):  # not caught: it ends them all
            list(run_jobs(int, ['1', 'x', '3'], jobs, 1, 'test', 'job'))


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux only')
def test_workers_end_when_the_parent_is_killed(tmp_path):
    (tmp_path / 'slow_job.py').write_text(textwrap.dedent('''
        import os, time
        def work(path):
            with open(path, 'w') as f:
                f.write(str(os.getpid()))
            time.sleep(120)
    '''))
    script = textwrap.dedent(f'''
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {ROOT!r}]
        from slow_job import work
        from vitpe.parallel import run_jobs
        list(run_jobs(work, [{str(tmp_path / 'a')!r}, {str(tmp_path / 'b')!r}], 2, 1, 'test', 'job'))
    ''')
    parent = subprocess.Popen([sys.executable, '-c', script], stderr=subprocess.DEVNULL)
    pid_files = [tmp_path / 'a', tmp_path / 'b']
    deadline = time.time() + 60
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert time.time() < deadline and parent.poll() is None, 'the workers did not start'
        time.sleep(0.2)
    workers = [int(p.read_text()) for p in pid_files]
    os.kill(parent.pid, signal.SIGKILL)  # no cleanup in the parent at all
    parent.wait()
    deadline = time.time() + 20
    while any(os.path.exists(f'/proc/{pid}') and 'zombie' not in open(f'/proc/{pid}/status').read()
              for pid in workers):
        assert time.time() < deadline, f'workers {workers} outlived their parent'
        time.sleep(0.2)
