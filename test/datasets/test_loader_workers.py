"""
DataLoader workers end with the process that started them, even when it is killed outright.

A trainer killed with SIGKILL used to leave its workers alive until their watchdog noticed, or
for ever when one was blocked writing a batch nobody would read: they held the trainer's
stdout and stderr open, so a caller waiting for those (a shell pipe, ``subprocess``) hung.
"""

from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'),
                                reason='the parent-death signal is Linux only')

# A loader whose batches are larger than a pipe's buffer, so that an unread batch blocks its
# worker; it prints its workers' PIDs and then waits to be killed.
_SCRIPT = r'''
import os, sys, time
import torch
from torch.utils.data import DataLoader, Dataset
from seg_training.datasets.build import loader_worker_init

class Big(Dataset):
    transform = None
    def __len__(self):
        return 64
    def __getitem__(self, i):
        return torch.full((4, 256, 256), float(os.getpid()))

loader = DataLoader(Big(), batch_size=2, num_workers=2, worker_init_fn=loader_worker_init())
it = iter(loader)
pids = {int(next(it)[0, 0, 0, 0]) for _ in range(4)}
print(' '.join(map(str, sorted(pids))), flush=True)
time.sleep(600)
'''


def _gone(pid: int) -> bool:
    """Tell whether ``pid`` has ended (no process, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(')', 1)[1].split()[0] == 'Z'


def test_workers_end_when_their_process_is_killed():
    proc = subprocess.Popen([sys.executable, '-c', _SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip(), f'no worker PIDs:\n{proc.communicate(timeout=60)[1][-3000:]}'
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and proc.pid not in workers
        assert not any(_gone(p) for p in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # The workers' own watchdog polls every 5 s; the parent-death signal is immediate.
        deadline = time.monotonic() + 2.0
        while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(_gone(p) for p in workers), f'workers {workers} outlived their process'
        # Nothing holds the process's pipes open any more.
        out, _ = proc.communicate(timeout=10)
        assert out == ''
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_whose_parent_is_already_gone_exits():
    # Bound to a PID that is not this process's parent, as after the parent died.
    code = ('import os; from seg_training.datasets.build import die_with_parent; '
            'die_with_parent(os.getppid() + 1); print("still here")')
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and 'still here' not in run.stdout
