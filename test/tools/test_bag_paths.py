"""
seg-bag never harms its input or another folder.

Output paths and --overwrite, an unwritable --stats-json, --alpha out of range, and SIGTERM.
"""

import os
from pathlib import Path
import signal
import subprocess
import time

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from seg_perception import bag
from test_bag import _image, IMAGE, read_bag, SEG_BAG, seg_bag_args, T0, TS, write_bag


def _tree(folder: Path) -> dict:
    """{relative path: size} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _run(capsys, model, inp, out, *extra):
    rc = bag.main(seg_bag_args(model, inp, out, '--overwrite', *extra))
    return rc, capsys.readouterr().err


@pytest.fixture
def store(tmp_path):
    """Make a folder of two drives, a bag beside it, and a link to the folder."""
    root = tmp_path / 'store'
    root.mkdir()
    write_bag(root / 'drive1', 'mcap')
    write_bag(root / 'drive2', 'sqlite3')
    write_bag(tmp_path / 'solo', 'mcap')
    (tmp_path / 'link').symlink_to(root)
    return tmp_path


@pytest.mark.parametrize('inp, out, says', [
    ('store/drive1', 'store', 'output contains the input bag'),
    ('store/drive1', 'link', 'output contains the input bag'),
    ('store/drive1', 'link/drive1', 'output is the input bag'),
    ('solo', 'solo/solo.mcap', 'output lies inside the input bag'),
    ('solo/solo.mcap', 'solo/segmented', 'output lies inside the input bag'),
    ('solo', 'store', 'not a bag that seg-bag writes, so --overwrite leaves it alone'),
])
def test_overwrite_never_touches_the_input_or_a_folder_of_bags(store, tiny_model_file,
                                                               capsys, inp, out, says):
    before = _tree(store)
    rc, err = _run(capsys, tiny_model_file, store / inp, store / out)
    assert rc == 1, err
    assert f'seg-bag: error: {store / out}: {says}' in err, err
    assert _tree(store) == before
    for drive in ('store/drive1', 'store/drive2', 'solo'):
        read_bag(store / drive)  # every input still opens


def test_overwrite_replaces_only_a_bag(tmp_path, tiny_model_file, capsys, caplog):
    write_bag(tmp_path / 'drive', 'mcap')
    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'todo.txt').write_text('keep me')
    rc, err = _run(capsys, tiny_model_file, tmp_path / 'drive', notes)
    assert rc == 1 and f'{notes}: not a bag that seg-bag writes, so --overwrite leaves it ' \
        'alone: ' in err and 'metadata.yaml: bag metadata not found' in err
    text = tmp_path / 'result.mcap'
    text.write_text('not a bag')
    rc, err = _run(capsys, tiny_model_file, tmp_path / 'drive', text)
    assert rc == 1 and '(neither an mcap nor a sqlite3 file)' in err
    assert text.read_text() == 'not a bag' and (notes / 'todo.txt').read_text() == 'keep me'

    old = tmp_path / 'old'
    write_bag(old, 'sqlite3')
    (old / 'notes.txt').write_text('mine')
    rc, err = _run(capsys, tiny_model_file, tmp_path / 'drive', old)
    assert rc == 1 and '(it holds notes.txt, no file of a rosbag2 bag)' in err
    (old / 'notes.txt').unlink()
    rc, err = _run(capsys, tiny_model_file, tmp_path / 'drive', old)
    assert rc == 0, err
    assert f'--overwrite: the rosbag2 bag {old} (' in caplog.text
    assert '/front/segmentation/labels' in read_bag(old)[0]

    single = tmp_path / 'single.mcap'  # a bag of one file is replaced by a bag folder
    single.write_bytes((tmp_path / 'drive' / 'drive.mcap').read_bytes())
    rc, err = _run(capsys, tiny_model_file, tmp_path / 'drive', single, '--outputs', 'labels')
    assert rc == 0, err
    assert f'--overwrite: the bag file {single} (' in caplog.text and single.is_dir()


@pytest.mark.parametrize('where', ['below_a_file', 'a_folder'])
def test_stats_json_that_cannot_be_written_is_refused_before_the_work(tmp_path, tiny_model_file,
                                                                      capsys, where):
    write_bag(tmp_path / 'drive', 'mcap')
    (tmp_path / 'a_file').write_text('x')
    (tmp_path / 'a_folder').mkdir()
    stats = tmp_path / 'a_file' / 'stats.json' if where == 'below_a_file' else \
        tmp_path / 'a_folder'
    rc = bag.main(seg_bag_args(tiny_model_file, tmp_path / 'drive', tmp_path / 'out',
                               '--stats-json', str(stats)))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f'seg-bag: error: {stats}: ') and err.count('\n') == 1, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('alpha', ['nan', '7', '-0.5'])
def test_alpha_outside_0_1_is_a_usage_error(alpha, capsys):
    with pytest.raises(SystemExit) as e:
        bag.main(['--model', 'm.pt', '--input', 'in', '--output', 'out', '--topic', '/a',
                  '--alpha', alpha])
    assert e.value.code == 2
    assert f'argument --alpha: {alpha} is outside [0, 1]' in capsys.readouterr().err


def _long_drive(path: Path, frames: int) -> None:
    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/front/image_raw', IMAGE, typestore=TS)
        for i in range(frames):
            t = T0 + i * 50_000_000
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            writer.write(conn, t, _image(t, 'front', 'rgb8', pixels))


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, tiny_model_file):
    _long_drive(tmp_path / 'drive', 3000)
    out = tmp_path / 'out'
    proc = subprocess.Popen([SEG_BAG, '--model', str(tiny_model_file), '--input',
                             str(tmp_path / 'drive'), '--output', str(out), '--topic',
                             '/front/image_raw', '--device', 'cpu', '--no-progress'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith('.out.incomplete-') for p in tmp_path.iterdir()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, 'no output started in time'
            time.sleep(0.05)
        time.sleep(1.0)  # frames are being written
        assert proc.poll() is None, 'the run ended before it could be stopped'
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.strip().endswith('seg-bag: terminated (SIGTERM); no output bag written'), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive']
