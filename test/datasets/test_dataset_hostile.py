"""
Hostile dataset definitions end in one line naming the file or split, fast, in bounded memory.

Alias bombs, wrong types, foreign encodings, splits with nothing labelled, images that declare
gigapixels; links out of the dataset root are read and counted. The commands run as real
processes where their time and memory are what is checked.
"""

import logging
import os
from pathlib import Path
import resource
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from big_images import zero_png
from seg_training.base import yaml_reader
from seg_training.base.yaml_reader import ConfigError
from seg_training.datasets.build import build_dataset, check_datasets
from seg_training.datasets.segmentation import DatasetError, read_classes_yaml
from seg_training.evaluation import seg_eval as evaluate
from seg_training.training import loop as train
from seg_training.training.config import read_yaml
from test_formats import write_cvat
from training_data import write_folder

TINY = ['--size', '64x32', '--batch-size', '2', '--workers', '0', '--epochs', '1',
        '--no-plots']
LIMIT_BYTES = 3 << 30  # address space of the commands: imports take ~1.1 GB


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Return a YAML document of ~500 bytes that expands to width ** (levels + 1) strings."""
    lines = [f'b0: &b0 [{", ".join(["lol"] * width)}]']
    for i in range(1, levels + 1):
        lines.append(f'b{i}: &b{i} [{", ".join([f"*b{i - 1}"] * width)}]')
    return '\n'.join(lines) + '\n'


def run_bounded(cmd, timeout: float = 120.0):
    """Run ``cmd`` with a capped address space; return (rc, stderr, seconds, peak RSS MiB)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))

    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MALLOC_ARENA_MAX': '2'}
    t0 = time.monotonic()
    with open(os.devnull, 'wb') as null, \
            subprocess.Popen(cmd, stdout=null, stderr=subprocess.PIPE, env=env,
                             preexec_fn=cap) as proc:
        try:
            err = proc.stderr.read()  # until the process closes it (ends)
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - t0
    assert seconds < timeout, f'{cmd[2]} took {seconds:.0f} s'
    return proc.returncode, err.decode(errors='replace'), seconds, usage.ru_maxrss / 1024


def _train_cmd(root: Path, out: Path):
    return [sys.executable, '-m', 'seg_training.training.loop', '--dataset', 'folder',
            '--data-root', str(root), '--output-dir', str(out), *TINY]


def _eval_cmd(root: Path, model: Path):
    return [sys.executable, '-m', 'seg_training.evaluation.seg_eval', '--model', str(model),
            '--dataset', 'folder', '--data-root', str(root), '--device', 'cpu', '--workers', '0']


def _error_line(err: str) -> str:
    """Return the one error line of a command (``seg-...: error: ...``), checking there is one."""
    assert 'Traceback' not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ': error: ' in ln]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- YAML

def test_yaml_alias_bomb_in_classes_yaml_is_refused_at_once(tmp_path, tiny_model_file):
    root = write_folder(tmp_path / 'data', n_train=2, n_val=2)
    (root / 'classes.yaml').write_text(alias_bomb() + 'classes:\n  - {name: *b9, color: '
                                       '[1, 2, 3]}\n')
    assert (root / 'classes.yaml').stat().st_size < 600
    for cmd, rc_wanted in ((_train_cmd(root, tmp_path / 'run'), 2),
                           (_eval_cmd(root, tiny_model_file), 1)):
        rc, err, seconds, peak_mib = run_bounded(cmd)
        line = _error_line(err)
        assert rc == rc_wanted, err[-3000:]
        assert f'{root / "classes.yaml"}: aliases expand' in line
        assert seconds < 60 and peak_mib < 1500, (seconds, peak_mib)
    assert not (tmp_path / 'run').exists()


def test_shared_yaml_reader_bounds(tmp_path):
    bomb = tmp_path / 'bomb.yaml'
    bomb.write_text(alias_bomb())
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f'{bomb}: aliases expand 30 YAML values to '):
        yaml_reader.read_yaml_file(bomb)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(ConfigError, match='alias refers to a node that contains it'):
        yaml_reader.load_yaml('a: &a [1, *a]', 'loop.yaml')
    big = tmp_path / 'big.yaml'
    big.write_text('x: ' + 'a' * (2 << 20))
    with pytest.raises(ConfigError, match=f'{big}: config file larger than 1048576 bytes'):
        read_yaml(big)
    latin = tmp_path / 'latin.yaml'
    latin.write_bytes('name: caf\xe9\n'.encode('latin-1'))
    with pytest.raises(ConfigError, match=f'{latin}: config file is not UTF-8 text '
                                          r'\(byte 0xe9 at offset 9\)'):
        read_yaml(latin)
    deep = tmp_path / 'deep.yaml'
    deep.write_text('[' * 5000 + ']' * 5000)
    with pytest.raises(ConfigError, match=f'{deep}: YAML nested too deeply'):
        yaml_reader.read_yaml_file(deep)
    # Anchors used as people use them (shared colours, merge keys) still load.
    assert yaml_reader.load_yaml('c: &c [1, 2, 3]\nd: {<<: {x: *c}, y: *c}\n', 's') == {
        'c': [1, 2, 3], 'd': {'x': [1, 2, 3], 'y': [1, 2, 3]}}


def test_seg_train_config_bomb_is_a_usage_error(tmp_path, capsys):
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text(alias_bomb() + 'epochs: 1\n')
    rc = train.main(['--config', str(cfg), '--data-root', str(tmp_path), '--output-dir',
                     str(tmp_path / 'run')])
    assert rc == 2
    assert f'seg-train: error: {cfg}: aliases expand' in capsys.readouterr().err


@pytest.mark.parametrize('preset', ['[cityscapes19]', '{name: cityscapes19}'])
def test_preset_that_is_not_a_name(tmp_path, preset):
    (tmp_path / 'classes.yaml').write_text(f'preset: {preset}\n')
    with pytest.raises(DatasetError, match=f'{tmp_path / "classes.yaml"}: preset must be a name '
                                           r"\(one of \['cityscapes19'\]\)"):
        read_classes_yaml(tmp_path / 'classes.yaml')


def test_files_that_are_not_utf8_are_named(tmp_path, capsys):
    root = write_folder(tmp_path / 'folder', n_train=2, n_val=1)
    yml = root / 'classes.yaml'
    yml.write_bytes(yml.read_bytes().replace(b'road', b'r\xf6ad'))
    with pytest.raises(DatasetError, match=f'{yml}: class list is not UTF-8 text'):
        build_dataset('folder', root, 'train')
    rc = train.main(['--dataset', 'folder', '--data-root', str(root), '--output-dir',
                     str(tmp_path / 'run'), *TINY])
    assert rc == 2 and f'seg-train: error: {yml}: class list is not UTF-8' in \
        capsys.readouterr().err

    cvat = write_cvat(tmp_path / 'cvat')
    labelmap = cvat / 'labelmap.txt'
    good = labelmap.read_bytes()
    labelmap.write_bytes(good.replace(b'road', b'stra\xdfe'))
    with pytest.raises(DatasetError, match=f'{labelmap}: label map is not UTF-8 text'):
        build_dataset('cvat', cvat, 'train')
    labelmap.write_bytes(good)
    listing = cvat / 'ImageSets' / 'Segmentation' / 'val.txt'
    listing.write_bytes(b'\xff\xfe' + listing.read_text().encode('utf-16-le'))
    with pytest.raises(DatasetError, match=f'{listing}: image list is not UTF-8 text '
                                           r'\(byte 0xff at offset 0\)'):
        build_dataset('cvat', cvat, 'val')


# ----------------------------------------------------------------------------- labels

def _relabel(root: Path, split: str, value: int) -> None:
    """Set every pixel of the masks of ``split`` to ``value``."""
    for mask in (root / 'masks' / split).glob('*.png'):
        arr = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(mask), np.full_like(arr, value))


def test_training_split_without_a_labelled_pixel_is_refused(tmp_path, capsys):
    root = write_folder(tmp_path / 'data', n_train=2, n_val=2)
    _relabel(root, 'train', 200)  # a value no class claims
    out = tmp_path / 'run'
    rc = train.main(['--dataset', 'folder', '--data-root', str(root), '--output-dir', str(out),
                     *TINY])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"seg-train: error: {root}: split 'train' has no labelled pixel in its 2 masks" in err
    assert 'Traceback' not in err and not out.exists()


def test_seg_eval_of_a_split_without_a_labelled_pixel_fails(tmp_path, tiny_model_file):
    root = write_folder(tmp_path / 'data', n_train=1, n_val=2)
    _relabel(root, 'val', 255)  # all ignore
    with pytest.raises(SystemExit) as e:
        evaluate.main(['--model', str(tiny_model_file), '--dataset', 'folder', '--data-root',
                       str(root), '--device', 'cpu', '--workers', '0'])
    assert e.value.code == f"seg-eval: error: {root}: split 'val' has no labelled pixel in its " \
        '2 masks: every mask value is the ignore label or matches no class (check the masks ' \
        'against the class table)'


# ----------------------------------------------------------------------------- images

def test_image_declaring_gigapixels_is_refused_from_its_header(tmp_path, tiny_model_file):
    root = write_folder(tmp_path / 'data', n_train=2, n_val=2)
    # A consistent sample (all road): only its size is wrong, 400 megapixels in 400 kB.
    bombs = {}
    for split, name in (('train', 'frame_0000.png'), ('val', 'frame_0001.png')):
        bombs[split] = root / 'images' / split / name
        for path in (bombs[split], root / 'masks' / split / name):
            path.write_bytes(zero_png(20000, 20000))
            assert path.stat().st_size < 2 << 20
    with pytest.raises(DatasetError, match=f'{bombs["val"]}: 20000x20000 = 400000000 pixels, '
                                           'more than the 67108864'):
        check_datasets([build_dataset('folder', root, 'val')])
    for cmd, rc_wanted in ((_train_cmd(root, tmp_path / 'run'), 2),
                           (_eval_cmd(root, tiny_model_file), 1)):
        rc, err, seconds, peak_mib = run_bounded(cmd)
        assert rc == rc_wanted, err[-3000:]
        assert f'{bombs["val"]}: 20000x20000 = 400000000 pixels' in err, err[-3000:]
        assert 'Traceback' not in err and peak_mib < 1500, peak_mib


def test_image_links_out_of_the_root_are_read_and_counted(tmp_path, caplog):
    root = write_folder(tmp_path / 'data', n_train=3, n_val=1)
    store = tmp_path / 'shared_store'
    store.mkdir()
    for name in ('frame_0000.png', 'frame_0002.png'):
        image = root / 'images' / 'train' / name
        target = store / name
        image.rename(target)
        image.symlink_to(target)
    with caplog.at_level(logging.INFO, logger='seg_training.datasets.segmentation'):
        ds = build_dataset('folder', root, 'train')
    notes = [r.getMessage() for r in caplog.records if 'links to outside' in r.getMessage()]
    assert notes == [f'{root} split train: 2 of 6 image and mask files are links to outside '
                     f'the dataset root (e.g. {root / "images/train/frame_0000.png"} -> '
                     f'{store / "frame_0000.png"}); they are read as they are']
    image, _ = ds.load(2)
    assert image.shape == (32, 64, 3)
    check_datasets([ds])
