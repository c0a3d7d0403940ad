"""Other tools' dataset layouts (BDD100K, mmseg, CamVid, CVAT) and the cityscapes19 preset."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from seg_training.base.classes import cityscapes_table, IGNORE_INDEX
from seg_training.datasets.build import build_dataset
from seg_training.datasets.formats import CAMVID
from seg_training.datasets.segmentation import DatasetError
from seg_training.training.loop import main
from training_data import scene, SCENE

SIZE = (64, 32)
TINY = ['--size', '64x32', '--batch-size', '4', '--workers', '0', '--no-plots']
# The test scene's classes under each format's numbering.
TRAIN_IDS = {'road': 0, 'sidewalk': 1, 'building': 2, 'pole': 5, 'vegetation': 8, 'sky': 10,
             'person': 11, 'car': 13}
CAMVID_IDS = {'road': 3, 'sidewalk': 4, 'building': 1, 'pole': 2, 'vegetation': 5, 'sky': 0,
              'person': 9, 'car': 8}
CVAT_COLORS = {'road': (128, 64, 128), 'sidewalk': (244, 35, 232), 'building': (70, 70, 70),
               'pole': (153, 153, 153), 'vegetation': (107, 142, 35), 'sky': (70, 130, 180),
               'person': (220, 20, 60), 'car': (0, 0, 142)}


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), arr)


def _scenes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [scene(rng, *SIZE) for _ in range(n)]


def _lut(ids: dict, fill: int) -> np.ndarray:
    lut = np.full(256, fill, np.uint8)
    for i, name in enumerate(SCENE):
        lut[i] = ids[name]
    return lut


def write_bdd100k(root: Path, counts=(('train', 6), ('val', 3))) -> Path:
    lut = _lut(TRAIN_IDS, IGNORE_INDEX)
    for split, n in counts:
        for i, (img, mask) in enumerate(_scenes(n, len(split))):
            mask = lut[mask]
            mask[0, 0] = IGNORE_INDEX
            _write(root / 'images' / '10k' / split / f'{split}{i:03d}.jpg', img)
            _write(root / 'labels' / 'sem_seg' / 'masks' / split / f'{split}{i:03d}.png', mask)
    return root


def write_mmseg(root: Path, counts=(('train', 6), ('val', 3))) -> Path:
    lut = _lut(TRAIN_IDS, IGNORE_INDEX)
    for split, n in counts:
        for i, (img, mask) in enumerate(_scenes(n, len(split))):
            _write(root / 'img_dir' / split / f'{i:03d}.png', img)
            _write(root / 'ann_dir' / split / f'{i:03d}.png', lut[mask])
    (root / 'classes.yaml').write_text('preset: cityscapes19\n')
    return root


def write_camvid(root: Path, counts=(('train', 6), ('val', 3))) -> Path:
    lut = _lut(CAMVID_IDS, 11)
    for split, n in counts:
        for i, (img, mask) in enumerate(_scenes(n, len(split))):
            mask = lut[mask]
            mask[0, 0] = 11  # void
            _write(root / split / f'0001TP_{i:06d}.png', img)
            _write(root / f'{split}annot' / f'0001TP_{i:06d}.png', mask)
    return root


def write_cvat(root: Path, counts=(('train', 6), ('val', 3))) -> Path:
    lines = ['# label:color_rgb:parts:actions', 'background:0,0,0::']
    lines += [f'{n}:{",".join(map(str, CVAT_COLORS[n]))}::' for n in SCENE]
    (root).mkdir(parents=True, exist_ok=True)
    (root / 'labelmap.txt').write_text('\n'.join(lines) + '\n')
    palette = np.array([CVAT_COLORS[n] for n in SCENE], np.uint8)
    for split, n in counts:
        names = []
        for i, (img, mask) in enumerate(_scenes(n, len(split))):
            name = f'{split}_frame_{i:03d}'
            rgb = palette[mask]
            rgb[0, 0] = 0  # background: ignored
            _write(root / 'JPEGImages' / f'{name}.png', img)
            _write(root / 'SegmentationClass' / f'{name}.png', rgb)
            names.append(name)
        listing = root / 'ImageSets' / 'Segmentation' / f'{split}.txt'
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text('\n'.join(names) + '\n')
    return root


WRITERS = {'bdd100k': write_bdd100k, 'mmseg': write_mmseg, 'camvid': write_camvid,
           'cvat': write_cvat}


def _expected(kind: str, ds, mask: np.ndarray) -> np.ndarray:
    """Return the scene mask in the dataset's class indices (SCENE -> class by name)."""
    names = {'car': 'car', 'vegetation': 'vegetation', 'person': 'person', 'sidewalk': 'sidewalk'}
    if kind == 'camvid':
        names.update({'vegetation': 'tree', 'person': 'pedestrian'})
    lut = np.array([ds.classes.index(names.get(n, n)) for n in SCENE], np.uint8)
    return lut[mask]


@pytest.mark.parametrize('kind', sorted(WRITERS))
def test_format_reads_images_and_class_indices(tmp_path, kind):
    root = WRITERS[kind](tmp_path / kind)
    ds = build_dataset(kind, root, 'val')
    assert len(ds) == 3
    rng_scenes = _scenes(3, len('val'))
    for i, (img, mask) in enumerate(rng_scenes):
        got_img, got_mask = ds[i]
        assert got_img.shape == (SIZE[1], SIZE[0], 3)
        want = _expected(kind, ds, mask)
        if kind != 'mmseg':  # the others mark their own void/background at (0, 0)
            want[0, 0] = IGNORE_INDEX
        np.testing.assert_array_equal(got_mask, want)
        if kind != 'bdd100k':  # lossless images (BDD100K ships JPEG)
            np.testing.assert_array_equal(got_img, img)


def test_class_tables_of_the_formats(tmp_path):
    assert build_dataset('bdd100k', write_bdd100k(tmp_path / 'b'), 'val').classes == \
        cityscapes_table()
    assert build_dataset('mmseg', write_mmseg(tmp_path / 'm'), 'val').classes == \
        cityscapes_table()
    assert build_dataset('camvid', write_camvid(tmp_path / 'c'), 'val').classes == CAMVID
    cvat = build_dataset('cvat', write_cvat(tmp_path / 'v'), 'val').classes
    assert cvat.names == SCENE  # background is not a class
    assert cvat.colors == tuple(CVAT_COLORS[n] for n in SCENE)


def test_older_bdd100k_layout(tmp_path):
    root = write_bdd100k(tmp_path / 'new')
    old = tmp_path / 'old'
    for p in (root / 'images' / '10k' / 'val').glob('*.jpg'):
        (old / 'images' / 'val').mkdir(parents=True, exist_ok=True)
        (old / 'images' / 'val' / p.name).write_bytes(p.read_bytes())
        src = root / 'labels' / 'sem_seg' / 'masks' / 'val' / (p.stem + '.png')
        (old / 'labels' / 'val').mkdir(parents=True, exist_ok=True)
        (old / 'labels' / 'val' / f'{p.stem}_train_id.png').write_bytes(src.read_bytes())
    a, b = build_dataset('bdd100k', root, 'val'), build_dataset('bdd100k', old, 'val')
    np.testing.assert_array_equal(a[1][1], b[1][1])


def test_format_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match='images/10k/val'):
        build_dataset('bdd100k', tmp_path / 'nothing', 'val')
    root = write_cvat(tmp_path / 'cvat')
    with pytest.raises(DatasetError, match=r'test\.txt.*subsets: train, val'):
        build_dataset('cvat', root, 'test')
    (root / 'labelmap.txt').write_text('road:128,64\n')
    with pytest.raises(DatasetError, match=r'labelmap\.txt:1'):
        build_dataset('cvat', root, 'val')
    mm = write_mmseg(tmp_path / 'mm')
    (mm / 'classes.yaml').unlink()
    with pytest.raises(DatasetError, match='classes.yaml not found'):
        build_dataset('mmseg', mm, 'val')
    cam = write_camvid(tmp_path / 'cam')
    victim = sorted((cam / 'valannot').glob('*.png'))[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=victim.stem):
        build_dataset('camvid', cam, 'val')


def test_cityscapes19_preset_in_a_folder_dataset(tmp_path):
    root = tmp_path / 'folder'
    lut = _lut(TRAIN_IDS, IGNORE_INDEX)
    for split in ('train', 'val'):
        for i, (img, mask) in enumerate(_scenes(2, 1)):
            _write(root / 'images' / split / f'{i}.png', img)
            _write(root / 'masks' / split / f'{i}.png', lut[mask])
    (root / 'classes.yaml').write_text(yaml.safe_dump({'preset': 'cityscapes19'}))
    ds = build_dataset('folder', root, 'val')
    assert ds.classes == cityscapes_table()
    np.testing.assert_array_equal(ds[0][1], lut[_scenes(1, 1)[0][1]])
    (root / 'classes.yaml').write_text(yaml.safe_dump({'preset': 'kitti'}))
    with pytest.raises(DatasetError, match="unknown preset 'kitti'"):
        build_dataset('folder', root, 'val')


@pytest.mark.parametrize('kind', sorted(WRITERS))
def test_each_format_trains_one_epoch(tmp_path, kind):
    root = WRITERS[kind](tmp_path / kind)
    out = tmp_path / 'run'
    assert main(['--dataset', kind, '--data-root', str(root), '--output-dir', str(out),
                 '--epochs', '1', *TINY]) == 0
    summary = json.loads((out / 'summary.json').read_text())
    ds = build_dataset(kind, root, 'val')
    assert list(summary['per_class_iou']) == list(ds.classes.names)
    assert (out / 'best.pt').is_file()
