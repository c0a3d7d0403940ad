"""
One seg-train run per output folder: a second run, or --resume, is refused while one trains.

The runs are real seg-train processes. The holder is then killed with SIGKILL, which leaves its
lock file behind, and a --resume must train all the same.
"""

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from seg_training.nets.checkpoint import read_file
from training_data import write_folder

DEADLINE_S = 240.0


def _cmd(data_root: Path, out: Path, *extra: str):
    return [sys.executable, '-m', 'seg_training.training.loop', '--dataset', 'folder',
            '--data-root', str(data_root), '--output-dir', str(out), '--epochs', '500',
            '--size', '64x32', '--batch-size', '2', '--workers', '1', '--seed', '3', '--no-plots',
            *extra]


def _run(cmd) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEADLINE_S)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        assert proc.poll() is None, f'run ended early:\n{proc.communicate()[1][-3000:]}'
        assert time.monotonic() < deadline, f'no {path.name} in time'
        time.sleep(0.05)


def test_second_run_and_resume_are_refused_then_resume_after_sigkill(tmp_path):
    data = write_folder(tmp_path / 'data', n_train=8, n_val=2)
    out = tmp_path / 'run'
    first = subprocess.Popen(_cmd(data, out), env={**os.environ, 'OMP_NUM_THREADS': '1'},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / 'last.pt', first)  # it trains, and has a run to resume
        busy = f'seg-train: error: {out}: in use by another seg-train run (PID {first.pid})'
        second = _run(_cmd(data, out))
        assert second.returncode == 2 and busy in second.stderr, second.stderr[-3000:]
        assert 'split train' not in second.stderr  # refused before reading the dataset

        resumed = _run(_cmd(data, out, '--resume'))
        assert resumed.returncode == 2 and busy in resumed.stderr, resumed.stderr[-3000:]
        assert first.poll() is None  # the first run trains on, alone

        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=DEADLINE_S)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == -signal.SIGKILL
    from seg_training.training.lock import LOCK_NAME
    assert (out / LOCK_NAME).read_text() == f'{first.pid}\n'  # what the killed run left
    done = read_file(out / 'last.pt')['training_state']['progress']['epoch']
    assert done < 500

    after = _run(_cmd(data, out, '--resume', '--epochs', str(done + 1)))
    assert after.returncode == 0, after.stderr[-3000:]
    assert read_file(out / 'last.pt')['training_state']['progress']['epoch'] == done + 1
    rows = (out / 'metrics.csv').read_text().strip().splitlines()[1:]
    assert [r.split(',')[0] for r in rows] == [str(e) for e in range(1, done + 2)]
    assert not (out / LOCK_NAME).exists()  # a run that ends removes its lock file


def test_folder_lock_in_one_process(tmp_path):
    from seg_training.training.lock import folder_lock, FolderBusyError

    folder = tmp_path / 'new' / 'run'
    with folder_lock(folder, 'a test') as path:
        assert path.read_text() == f'{os.getpid()}\n'
        with pytest.raises(FolderBusyError, match=f'{folder}: in use by a test '
                                                  f'\\(PID {os.getpid()}\\)'):
            with folder_lock(folder, 'a test'):
                pass
    assert not folder.exists()  # made by the lock and left empty: removed
    folder.mkdir(parents=True)
    with folder_lock(folder):
        (folder / 'result').write_text('kept')
    assert sorted(p.name for p in folder.iterdir()) == ['result']


def test_output_dir_that_cannot_be_made_is_a_one_line_error(tmp_path, capsys):
    from seg_training.training import loop as train

    data = write_folder(tmp_path / 'data', n_train=2, n_val=1)
    (tmp_path / 'a_file').write_text('x')
    out = tmp_path / 'a_file' / 'run'
    rc = train.main(['--dataset', 'folder', '--data-root', str(data), '--output-dir', str(out),
                     '--epochs', '1', '--size', '64x32', '--workers', '0', '--no-plots'])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f'seg-train: error: {out / ".seg-train.lock"}: cannot be made: Not a ' \
        'directory\n'
