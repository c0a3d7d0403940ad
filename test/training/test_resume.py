"""
Resume: a run killed with SIGKILL and resumed ends bit for bit where an uninterrupted one does.

With a teacher too (distillation), which a resumed run must have unchanged.

Every run is a real seg-train process; the interrupted one is killed right after its first
last.pt appears, in the middle of the second epoch.
"""

import csv
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from seg_training.nets.checkpoint import read_file
from training_data import write_folder

EPOCHS = 3
DEADLINE_S = 240.0


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('data') / 'f', n_train=8, n_val=2)


def _cmd(data_root: Path, out: Path, workers: int, *extra: str):
    return [sys.executable, '-m', 'seg_training.training.loop', '--dataset', 'folder',
            '--data-root', str(data_root), '--output-dir', str(out), '--epochs', str(EPOCHS),
            '--size', '64x32', '--batch-size', '2', '--workers', str(workers), '--seed', '11',
            '--no-plots', *extra]


def _env():
    # The same thread count in every run: reductions happen in the same order.
    return {**os.environ, 'OMP_NUM_THREADS': '1'}


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=DEADLINE_S,
                          **kw)


def _default_sigint() -> None:
    """
    Give the child Python's Ctrl-C handling, whatever this process inherited.

    A background job of a script starts with SIGINT ignored, and Python installs its
    KeyboardInterrupt handler only over SIG_DFL.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_signal(cmd, last: Path, sig: int) -> subprocess.Popen:
    """
    Start ``cmd``, wait for its first last.pt, send ``sig``; return the ended process.

    Its stderr is in ``err_text``.
    """
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not last.exists():
            assert proc.poll() is None, f'run ended early:\n{proc.communicate()[1][-3000:]}'
            assert time.monotonic() < deadline, 'no last.pt in time'
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.err_text = proc.communicate(timeout=DEADLINE_S)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def _final_state(out: Path):
    obj = read_file(out / 'last.pt')
    return obj['state_dict'], obj['training_state']


def _teacher_args(tmp_path: Path, name: str, model_file: Path):
    """--teacher options with a copy of ``model_file`` of the run's own (it may be changed)."""
    teacher = tmp_path / name
    shutil.copyfile(model_file, teacher)
    return ['--teacher', str(teacher), '--kd-temperature', '2', '--kd-weight', '0.5']


@pytest.mark.parametrize('workers, with_teacher', [(0, False), (2, False), (0, True)])
def test_sigkill_then_resume_is_bit_exact(data_root, tmp_path, workers, with_teacher,
                                          tiny_model_file):
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    ref_kd = _teacher_args(tmp_path, 'ref_teacher.pt', tiny_model_file) if with_teacher else []
    cut_kd = _teacher_args(tmp_path, 'teacher.pt', tiny_model_file) if with_teacher else []
    # The uninterrupted reference runs alongside (one thread each on two cores).
    reference = subprocess.Popen(_cmd(data_root, ref, workers, *ref_kd), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc = _start_and_signal(_cmd(data_root, cut, workers, *cut_kd), cut / 'last.pt',
                                 signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL
        _, state = _final_state(cut)
        assert 1 <= state['progress']['epoch'] < EPOCHS, 'the kill should land mid-training'

        if workers == 0:  # a resumed run may not change the recipe
            refused = _run(_cmd(data_root, cut, workers, '--resume', '--lr', '0.1'))
            assert refused.returncode == 2 and 'lr' in refused.stderr
        if with_teacher:  # nor its teacher: the weights' hash is checked
            teacher = Path(cut_kd[1])
            obj = read_file(teacher)
            obj['state_dict'] = {k: v + 1 if v.is_floating_point() else v
                                 for k, v in obj['state_dict'].items()}
            torch.save(obj, teacher)
            refused = _run(_cmd(data_root, cut, workers, '--resume'))
            assert refused.returncode == 2
            assert f'teacher {teacher} differs from the one the run started with' in \
                refused.stderr
            shutil.copyfile(tiny_model_file, teacher)

        resumed = _run(_cmd(data_root, cut, workers, '--resume'))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _, err = reference.communicate(timeout=DEADLINE_S)
        assert reference.returncode == 0, err[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()

    ref_sd, ref_state = _final_state(ref)
    cut_sd, cut_state = _final_state(cut)
    assert ref_sd.keys() == cut_sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], cut_sd[k]), f'{k} differs after resume'
    for a, b in zip(ref_state['optimizer']['state'].values(),
                    cut_state['optimizer']['state'].values()):
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert ref_state['progress']['best_miou'] == cut_state['progress']['best_miou']
    assert cut_state['progress']['epoch'] == EPOCHS
    best_ref = read_file(ref / 'best.pt')['state_dict']
    best_cut = read_file(cut / 'best.pt')['state_dict']
    assert all(torch.equal(best_ref[k], best_cut[k]) for k in best_ref)
    rows = (cut / 'metrics.csv').read_text().strip().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == [str(e) for e in range(1, EPOCHS + 1)]
    if with_teacher:  # the loss is (1 - a) CE + a KD, both logged
        with open(cut / 'metrics.csv') as f:
            for r in csv.DictReader(f):
                assert float(r['train_loss']) == pytest.approx(
                    0.5 * float(r['train_ce']) + 0.5 * float(r['train_kd']), rel=1e-6)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_last_checkpoint(data_root, tmp_path, sig):
    out = tmp_path / 'out'
    # More epochs than can pass before the signal lands, so it lands mid-run.
    proc = _start_and_signal(_cmd(data_root, out, 0, '--epochs', '50'), out / 'last.pt', sig)
    assert proc.returncode == 130, proc.err_text[-3000:]
    obj = read_file(out / 'last.pt')
    # The checkpoint was rewritten on the way out, flagged as an interrupted epoch.
    assert obj['training_state']['interrupted'] is True
    assert obj['training_state']['progress']['epoch'] >= 1
