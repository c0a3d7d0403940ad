"""
A full disk while saving, and what killed runs leave behind.

The end-to-end test fills a real tmpfs (it needs to be root to mount one and is skipped
otherwise); the unit test makes the file object under ``torch.save`` fail with ENOSPC, as a full
disk does, and runs everywhere.
"""

import errno
import os
from pathlib import Path
import shutil
import subprocess
import time

import pytest
import torch

from seg_training.nets import checkpoint
from seg_training.nets.checkpoint import atomic_save, read_file
from seg_training.training import loop as train
from training_data import write_folder

TINY = ['--size', '64x32', '--batch-size', '4', '--workers', '0', '--seed', '5', '--no-plots']
OLD = time.time() - 3600.0  # mtime of the leftovers of a run killed an hour ago


class _FullDiskFile:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, path, mode, room: int) -> None:
        self._f = open(path, mode)
        self._room = room

    def write(self, data) -> int:
        n = len(memoryview(data).cast('B'))
        if n > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from seg_training.base.files import NoSpaceError

    target = tmp_path / 'last.pt'
    atomic_save({'epoch': 1, 'w': torch.arange(10.0)}, target)
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint, 'open',
                        lambda path, mode: _FullDiskFile(path, mode, room=200), raising=False)
    with pytest.raises(NoSpaceError) as e:
        atomic_save({'epoch': 2, 'w': torch.zeros(100000)}, target)
    assert str(e.value).startswith(f'{target}: no space left on device (')
    assert 'the previous last.pt is unchanged' in str(e.value)
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert read_file(target)['epoch'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt']


def _plant_leftovers(folder: Path) -> dict:
    """Temporaries of killed writers (old), of a writer at work (new), and unrelated files."""
    names = {'gone': ['.last.pt.k3x_9a0q.tmp', '.best.pt.0abcdefg.tmp',
                      '.summary.json.zz_1234a.tmp'],
             'kept': ['.last.pt.notes', 'last.pt.12345678.tmp', '.best.pt.short.tmp',
                      '.other.pt.abcdefgh.tmp']}
    folder.mkdir(parents=True, exist_ok=True)
    for name in names['gone'] + names['kept']:
        (folder / name).write_bytes(b'partial')
        os.utime(folder / name, (OLD, OLD))
    busy = folder / '.last.pt.busy1234.tmp'
    busy.write_bytes(b'being written now')
    os.utime(busy, (time.time() + 60.0, time.time() + 60.0))
    names['kept'].append(busy.name)
    return names


def test_a_save_removes_the_temporaries_of_killed_writers(tmp_path):
    names = _plant_leftovers(tmp_path)
    atomic_save({'epoch': 1}, tmp_path / 'last.pt')
    left = {p.name for p in tmp_path.iterdir()}
    assert '.last.pt.k3x_9a0q.tmp' not in left
    assert '.best.pt.0abcdefg.tmp' in left  # another file's: removed by its own next save
    atomic_save({'epoch': 1}, tmp_path / 'best.pt')
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {'last.pt', 'best.pt', '.summary.json.zz_1234a.tmp', *names['kept']}


def test_the_next_run_on_an_output_removes_leftovers(tmp_path):
    data = write_folder(tmp_path / 'data', n_train=4, n_val=2)
    out = tmp_path / 'run'
    names = _plant_leftovers(out)
    assert train.main(['--dataset', 'folder', '--data-root', str(data), '--output-dir',
                       str(out), '--epochs', '1', *TINY]) == 0
    left = {p.name for p in out.iterdir()}
    assert not left & set(names['gone'])
    assert set(names['kept']) <= left and {'last.pt', 'best.pt', 'summary.json'} <= left


@pytest.fixture
def small_disk(tmp_path):
    """Mount a 96 MiB tmpfs for the test (root only)."""
    mnt = tmp_path / 'disk'
    mnt.mkdir()
    if shutil.which('mount') is None or subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', 'size=96m', 'tmpfs', str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip('cannot mount a tmpfs here (needs root); the simulated full disk test runs')
    try:
        yield mnt
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def test_training_on_a_full_disk_stops_clearly_and_resumes(small_disk, tmp_path, capsys):
    data = write_folder(tmp_path / 'data', n_train=4, n_val=2)
    out = small_disk / 'run'
    assert train.main(['--dataset', 'folder', '--data-root', str(data), '--output-dir',
                       str(out), '--epochs', '1', *TINY]) == 0
    saved = (out / 'last.pt').read_bytes()
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / 'filler'
    with open(filler, 'wb') as f:  # leave 1 MiB, less than a model file
        f.write(b'\0' * (free - 2 ** 20))
    capsys.readouterr()
    rc = train.main(['--output-dir', str(out), '--resume', '--epochs', '2'])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert 'no space left on device' in err and 'unexpected pos' not in err
    assert f'{out}/last.pt: ' in err or f'{out}/best.pt: ' in err, err
    assert 'is unchanged' in err and 'continue with --resume' in err
    assert 'Traceback' not in err
    assert (out / 'last.pt').read_bytes() == saved
    assert not [p.name for p in out.iterdir() if p.name.endswith('.tmp')]

    filler.unlink()
    killed = out / '.last.pt.abcd1234.tmp'  # as a run killed while saving leaves it
    killed.write_bytes(saved[:1000])
    os.utime(killed, (OLD, OLD))
    assert train.main(['--output-dir', str(out), '--resume', '--epochs', '2']) == 0
    assert read_file(out / 'last.pt')['training_state']['progress']['epoch'] == 2
    assert not killed.exists()
