"""Bad data found before the first step: every bad file of both splits, listed at once."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_training.datasets.build import build_dataset, JointDataset
from seg_training.datasets.segmentation import DatasetError
from seg_training.evaluation import seg_eval as evaluate
from seg_training.training import loop as train
from training_data import write_cityscapes, write_folder

TINY = ['--size', '64x32', '--batch-size', '2', '--workers', '0', '--epochs', '1',
        '--no-plots']


def _damage_folder(root: Path) -> list:
    """Break five files over both splits in five ways; return the paths to be named."""
    truncated = root / 'images' / 'train' / 'frame_0001.jpg'
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # OpenCV would fill the rest with grey
    garbage = root / 'images' / 'train' / 'frame_0003.jpg'
    garbage.write_bytes(b'not an image at all')
    small_mask = root / 'masks' / 'train' / 'frame_0004.png'
    assert cv2.imwrite(str(small_mask), np.zeros((16, 32), np.uint8))
    bad_mask = root / 'masks' / 'val' / 'frame_0000.png'
    bad_mask.write_bytes(b'\x89PNG\r\n\x1a\n broken')
    colour_mask = root / 'masks' / 'val' / 'frame_0002.png'
    assert cv2.imwrite(str(colour_mask), np.zeros((32, 64, 3), np.uint8))
    return [truncated, garbage, small_mask, bad_mask, colour_mask]


@pytest.fixture
def damaged(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=6, n_val=3, image_ext='.jpg')
    return root, _damage_folder(root)


def test_every_bad_file_of_both_splits_is_listed_at_once(damaged):
    from seg_training.datasets.build import check_datasets

    root, bad = damaged
    with pytest.raises(DatasetError) as e:
        check_datasets([build_dataset('folder', root, 'train'),
                        build_dataset('folder', root, 'val')], workers=2)
    message = str(e.value)
    assert message.startswith('5 problems in 9 samples of')
    for path in bad:
        assert str(path) in message, message
    assert 'truncated' in message and 'mask size 32x16 differs' in message
    assert 'expected a single-channel mask' in message


def test_a_truncated_jpeg_mask_is_found(tmp_path):
    from seg_training.datasets.build import check_datasets

    root = write_folder(tmp_path / 'f', n_train=2, n_val=1)
    png = root / 'masks' / 'train' / 'frame_0001.png'
    mask = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    png.unlink()
    jpg = png.with_suffix('.jpg')
    assert cv2.imwrite(str(jpg), np.kron(mask, np.ones((8, 8), np.uint8)))  # big enough to cut
    # The intact JPEG mask is taken (its size is checked against the image's).
    problems = _check_problems(check_datasets, build_dataset('folder', root, 'train'))
    assert problems == [f'{jpg}: mask size 512x256 differs from image '
                        f'{root / "images" / "train" / "frame_0001.png"} size 64x32']
    assert cv2.imwrite(str(jpg), mask)
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(jpg), cv2.IMREAD_UNCHANGED) is not None  # OpenCV takes it, grey-filled
    problems = _check_problems(check_datasets, build_dataset('folder', root, 'train'))
    assert len(problems) == 1 and problems[0].startswith(f'{jpg}: cannot be read as a mask image')
    assert 'truncated' in problems[0]


def _check_problems(check_datasets, ds) -> list:
    """Return the problem lines of check_datasets on ``ds`` (none: [])."""
    try:
        check_datasets([ds], workers=1)
    except DatasetError as e:
        return [line.strip().removeprefix('- ') for line in str(e).splitlines()[1:]]
    return []


def test_check_counts_what_the_label_histogram_counts(tmp_path):
    from seg_training.datasets.build import check_datasets

    root = write_folder(tmp_path / 'f', n_train=5, n_val=2)
    train_ds = build_dataset('folder', root, 'train')
    joint = JointDataset([train_ds, build_dataset('folder', root, 'val')], max_samples=4)
    hist_train, hist_joint = check_datasets([train_ds, joint], workers=2)
    assert np.array_equal(hist_train, train_ds.label_histogram())
    assert np.array_equal(hist_joint, joint.label_histogram())
    assert hist_train.sum() == 5 * (64 * 32 - 1)  # every pixel but the ignored corner


def test_cityscapes_unknown_train_id_is_found(tmp_path):
    from seg_training.datasets.build import check_datasets

    root = write_cityscapes(tmp_path / 'cs', n_train=2, n_val=2, train_ids=True)
    (mask,) = sorted((root / 'gtFine' / 'val').rglob('*_000001_gtFine_labelTrainIds.png'))
    arr = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    arr[5, 5] = 42
    assert cv2.imwrite(str(mask), arr)
    with pytest.raises(DatasetError, match=f'{mask}: class indices \\[42\\] outside 0..18'):
        check_datasets([build_dataset('cityscapes', root, 'val')])


def test_seg_train_stops_before_the_first_step(damaged, tmp_path, capsys):
    root, bad = damaged
    out = tmp_path / 'run'
    rc = train.main(['--dataset', 'folder', '--data-root', str(root), '--output-dir', str(out),
                     *TINY])
    err = capsys.readouterr().err
    assert rc == 2
    assert f'seg-train: error: 5 problems in 9 samples of {root} (train, val)' in err, err
    for path in bad:
        assert str(path) in err
    assert 'Traceback' not in err
    assert not (out / 'last.pt').exists() and not (out / 'best.pt').exists()
    assert not (out / 'config.yaml').exists()  # nothing of a run was started


def test_seg_eval_gives_a_one_line_error_not_a_worker_traceback(damaged, tiny_model_file):
    root, bad = damaged
    with pytest.raises(SystemExit) as e:
        evaluate.main(['--model', str(tiny_model_file), '--dataset', 'folder', '--data-root',
                       str(root), '--device', 'cpu', '--workers', '2'])
    message = str(e.value.code)
    first, *listed = message.splitlines()
    assert first.startswith('seg-eval: error: 2 problems in 3 samples'), message
    assert [p for p in bad if str(p) in message] == bad[3:]  # the val split only
    assert len(listed) == 2
    assert 'DataLoader worker' not in message and 'Traceback' not in message
