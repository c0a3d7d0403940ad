"""DDP: seg-train under torchrun with 2 CPU processes (gloo) trains and writes one set of files."""

import csv
import json
import os
import subprocess
import sys

import pytest

from seg_training.base.classes import CUSTOM8
from seg_training.evaluation.seg_eval import evaluate_model_file
from seg_training.nets.checkpoint import load_model
from training_data import write_folder


def _torchrun(root, out, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
           '2', '-m', 'seg_training.training.loop', '--dataset', 'folder', '--data-root',
           str(root), '--output-dir', str(out), '--epochs', '1', '--size', '64x32',
           '--batch-size', '2', '--workers', '0', '--device', 'cpu', '--no-plots', *extra]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_gloo(tmp_path):
    # 3 validation images: the ranks get unequal shards, and the summed matrix must still be
    # exactly the single-process one.
    root = write_folder(tmp_path / 'f', n_train=8, n_val=3)
    out = tmp_path / 'out'
    done = _torchrun(root, out)
    assert done.returncode == 0, done.stderr[-4000:]
    assert 'DDP rank 0/2 on cpu (gloo)' in done.stderr

    written = sorted(p.name for p in out.iterdir())
    assert written == ['best.pt', 'config.yaml', 'last.pt', 'metrics.csv', 'summary.json',
                       'tensorboard']
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['world_size'] == 2 and summary['num_val'] == 3
    _, info = load_model(out / 'best.pt')
    assert info.classes == CUSTOM8
    report = evaluate_model_file(out / 'best.pt', 'folder', root, device='cpu')
    assert report['miou'] == pytest.approx(summary['best_val_miou'], abs=1e-9)
    assert report['num_pixels'] == 3 * (64 * 32 - 1)


def test_torchrun_checks_the_data_once_and_every_rank_stops(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=4, n_val=2)
    bad = root / 'images' / 'train' / 'frame_0002.png'
    bad.write_bytes(b'not an image')
    done = _torchrun(root, tmp_path / 'out')
    assert done.returncode != 0
    # Rank 0 read the files and lists the bad one; rank 1 only points to it.
    assert done.stderr.count(f'{bad}: cannot be read as an image') == 1, done.stderr[-4000:]
    assert '[rank 1] the data check of rank 0 failed' in done.stderr
    assert not (tmp_path / 'out' / 'last.pt').exists()


def test_torchrun_distils_on_every_rank(tmp_path, tiny_model_file):
    # Frames without labels: a rank without the teacher would have no loss at all.
    root = write_folder(tmp_path / 'f', n_train=8, n_val=2)
    out = tmp_path / 'out'
    done = _torchrun(root / 'images' / 'train', out, '--dataset', 'images', '--val-dataset',
                     'folder', '--val-data-root', str(root), '--teacher', str(tiny_model_file))
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out / 'metrics.csv') as f:
        row = next(csv.DictReader(f))
    assert float(row['train_kd']) == float(row['train_loss']) > 0 and row['train_ce'] == ''
    _, info = load_model(out / 'best.pt')
    assert info.provenance['teacher']['source'] == str(tiny_model_file)
