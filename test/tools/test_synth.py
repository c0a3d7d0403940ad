"""seg-synth: file layouts, label values, determinism, domains, sequences and the CLI."""

import dataclasses
from pathlib import Path
import re

import cv2
import numpy as np
from PIL import Image
import pytest
import yaml

from seg_training.base.classes import cityscapes_label_to_train_id, CUSTOM8, IGNORE_INDEX
from seg_training.base.cli import parse_size
from seg_training.datasets.build import CityscapesDataset, FolderDataset
from seg_training.synth import (CITIES, drive_seed, generate, label_lut, LABEL_IDS, main,
                                render_frame, render_sequence, sample_drive)
from seg_training.synth.render import Look
from seg_training.synth.scene import (BUILDING, CAR, Drive, EGO_VEHICLE, ROAD, SKY, TERRAIN,
                                      TRUCK, VEGETATION)

SMALL = (128, 64)


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def cityscapes_set(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth') / 'cs'
    summary = generate(out, 'cityscapes', n_train=6, n_val=3, size=SMALL, seed=3,
                       sequence_length=3)
    return out, summary


def test_cityscapes_layout_names_and_labels(cityscapes_set):
    out, summary = cityscapes_set
    assert summary['frames'] == 9 and summary['domain'] == 'source'
    pattern = re.compile(r'^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$')
    lut = cityscapes_label_to_train_id()
    cities = {}
    for split, n in (('train', 6), ('val', 3)):
        images = sorted((out / 'leftImg8bit' / split).glob('*/*.png'))
        assert len(images) == n
        for img_path in images:
            m = pattern.match(img_path.name)
            assert m, img_path.name
            city = img_path.parent.name
            assert m.group(1) == city and city in CITIES[split]
            cities.setdefault(split, set()).add(city)
            stem = img_path.name[:-len('_leftImg8bit.png')]
            gt = out / 'gtFine' / split / city
            label_ids = cv2.imread(str(gt / f'{stem}_gtFine_labelIds.png'), cv2.IMREAD_UNCHANGED)
            train_ids = cv2.imread(str(gt / f'{stem}_gtFine_labelTrainIds.png'),
                                   cv2.IMREAD_UNCHANGED)
            image = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (SMALL[1], SMALL[0], 3) and image.dtype == np.uint8
            assert label_ids.shape == train_ids.shape == (SMALL[1], SMALL[0])
            assert set(np.unique(label_ids).tolist()) <= set(LABEL_IDS)
            np.testing.assert_array_equal(train_ids, lut[label_ids])
            assert image.std() > 10, f'{img_path} is nearly constant'
    assert not cities['train'] & cities['val']
    # the project's own loader reads the set
    ds = CityscapesDataset(out, 'val')
    image, mask = ds[0]
    assert image.shape == (SMALL[1], SMALL[0], 3) and mask.max() <= IGNORE_INDEX


def test_frames_of_a_drive_follow_the_sequence(cityscapes_set):
    out, _ = cityscapes_set
    names = sorted(p.name for p in (out / 'leftImg8bit' / 'train').glob('*/*.png'))
    frames = {}
    for name in names:
        city, seq, frame = name.split('_')[:3]
        frames.setdefault((city, seq), []).append(int(frame))
    assert sorted(len(v) for v in frames.values()) == [3, 3]
    for v in frames.values():
        assert v == [0, 5, 10]        # default stride: 5 steps of 0.1 s


def test_class_fractions_are_plausible():
    counts = {k: 0 for k in (ROAD, SKY, BUILDING, VEGETATION, CAR)}
    road = []
    n = 12
    for seed in range(n):
        rgb, labels = render_frame(seed, (256, 128), 'source')
        assert rgb.shape == (128, 256, 3) and labels.shape == (128, 256)
        assert rgb.dtype == labels.dtype == np.uint8
        present = set(np.unique(labels).tolist())
        assert present <= set(LABEL_IDS)
        for k in counts:
            counts[k] += k in present or (k == CAR and TRUCK in present)
        road.append((labels == ROAD).mean())
    for k, c in counts.items():
        assert c >= 0.75 * n, f'label {k} only in {c} of {n} frames'
    assert 0.12 < np.mean(road) < 0.6


@pytest.mark.parametrize('domain', ['source', 'target'])
def test_labels_match_image_edges(domain):
    # With texture, noise, blur and lens effects off, every label boundary is a colour edge:
    # labels are painted with the image's own polygons (no holes where objects overlap).
    flat = Look(gain=1.0, saturation=1.0, noise=0.0, vignette=0.0, blur=0.0, texture=0.0,
                texture_offset=(0.0, 0.0))
    for seed in range(6):
        drive = Drive(dataclasses.replace(sample_drive(seed, domain), look=flat))
        for view in ('front', 'rear'):
            rgb, labels = drive.render(2, (256, 128), view)
            for axis in (0, 1):
                label_edge = np.diff(labels.astype(int), axis=axis) != 0
                color_edge = np.abs(np.diff(rgb.astype(int), axis=axis)).sum(-1) > 0
                assert label_edge.sum() > 200
                agree = color_edge[label_edge].mean()
                assert agree > 0.97, f'{domain} drive {seed} {view}: {agree:.3f}'


def test_custom8_mapping():
    table, lut = label_lut('custom8')
    assert table == CUSTOM8
    assert lut[CAR] == lut[TRUCK] == CUSTOM8.index('vehicle')
    assert lut[TERRAIN] == lut[VEGETATION] == CUSTOM8.index('vegetation')
    assert lut[EGO_VEHICLE] == lut[0] == IGNORE_INDEX
    names = {CUSTOM8.names[lut[k]] for k in LABEL_IDS if lut[k] != IGNORE_INDEX}
    assert names == set(CUSTOM8.names)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(n_train=3, n_val=1, size=SMALL, sequence_length=2)
    generate(tmp_path / 'a', 'folder', seed=5, **kw)
    generate(tmp_path / 'b', 'folder', seed=5, workers=2, **kw)
    generate(tmp_path / 'c', 'folder', seed=6, **kw)
    a, b, c = (_files(tmp_path / k) for k in 'abc')
    assert a == b                                   # same seed (and workers do not matter)
    assert a.keys() == c.keys()
    images = [k for k in a if k.startswith('images/')]
    assert len(images) == 4
    assert all(a[k] != c[k] for k in images)


@pytest.mark.parametrize('mask_format', ['index', 'palette', 'rgb'])
def test_folder_layout_and_classes_yaml(tmp_path, mask_format):
    out = tmp_path / mask_format
    summary = generate(out, 'folder', 'custom8', n_train=3, n_val=2, size=SMALL, seed=2,
                       mask_format=mask_format)
    assert summary['domain'] == 'target' and summary['classes'] == 'custom8'
    doc = yaml.safe_load((out / 'classes.yaml').read_text())
    assert doc['mask_format'] == mask_format
    assert [c['name'] for c in doc['classes']] == list(CUSTOM8.names)
    assert [tuple(c['color']) for c in doc['classes']] == list(CUSTOM8.colors)
    if mask_format == 'rgb':
        assert [c['values'] for c in doc['classes']] == [[list(c)] for c in CUSTOM8.colors]
        assert doc['ignore_value'] == [0, 0, 0]
    else:
        assert [c['values'] for c in doc['classes']] == [[i] for i in range(8)]
        assert doc['ignore_value'] == 255
    for split, n in (('train', 3), ('val', 2)):
        images = sorted((out / 'images' / split).glob('*.png'))
        masks = sorted((out / 'masks' / split).glob('*.png'))
        assert len(images) == n and [p.name for p in images] == [p.name for p in masks]
    with Image.open(masks[0]) as im:
        assert im.mode == {'index': 'L', 'palette': 'P', 'rgb': 'RGB'}[mask_format]
    ds = FolderDataset(out, 'train')
    image, mask = ds[0]
    assert image.shape == (SMALL[1], SMALL[0], 3)
    assert set(np.unique(mask).tolist()) <= set(range(8)) | {IGNORE_INDEX}
    # all three mask kinds decode to the same classes as the scene's own labels
    drive = Drive(sample_drive(drive_seed(2, 'train', 0), 'target', 'targettrain'))
    _, labels = drive.render(0, SMALL)
    np.testing.assert_array_equal(mask, label_lut('custom8')[1][labels])


def test_domains_look_different():
    stats = {}
    for domain in ('source', 'target'):
        road, mean_rgb, sky_rows = [], [], []
        for seed in range(6):
            rgb, labels = render_frame(seed, (256, 128), domain)
            road.append(rgb[labels == ROAD].mean())
            mean_rgb.append(rgb.reshape(-1, 3).mean(0))
            sky_rows.append(np.argmax((labels != SKY).mean(1) > 0.99))  # first non-sky row
        stats[domain] = (np.mean(road), np.mean(mean_rgb, 0), np.mean(sky_rows))
    (road_s, rgb_s, rows_s), (road_t, rgb_t, rows_t) = stats['source'], stats['target']
    assert road_t < road_s - 15, stats                 # darker asphalt, duller weather
    assert rgb_t.mean() < rgb_s.mean() - 10, stats     # overcast, fog, dusk and rain
    assert np.abs(rgb_t - rgb_s).max() > 15, stats
    assert rows_t < rows_s, stats                      # higher horizon of the pitched camera


def test_sequence_frames_are_similar_but_move():
    frames = list(render_sequence(4, 3, (256, 128), 'source'))
    other_rgb, other_lab = render_frame(5, (256, 128), 'source')
    (rgb0, lab0), (rgb1, lab1), (rgb2, lab2) = frames
    assert not np.array_equal(rgb0, rgb1) and not np.array_equal(lab1, lab2)
    near = (lab0 == lab1).mean()
    far = (lab0 == lab2).mean()
    unrelated = (lab0 == other_lab).mean()
    assert near > 0.8 and near >= far > unrelated
    diff_near = np.abs(rgb0.astype(int) - rgb1).mean()
    diff_other = np.abs(rgb0.astype(int) - other_rgb).mean()
    assert diff_near < 0.6 * diff_other


def test_front_and_rear_views_of_one_drive():
    params = sample_drive(8, 'source')
    drive = Drive(params)
    front_rgb, front_lab = drive.render(3, (256, 128), 'front')
    rear_rgb, rear_lab = drive.render(3, (256, 128), 'rear')
    assert (front_lab == EGO_VEHICLE).any() and not (rear_lab == EGO_VEHICLE).any()
    assert (rear_lab == ROAD).mean() > 0.1
    assert not np.array_equal(front_rgb, rear_rgb)
    # render_frame with the same parameters is the same picture
    again_rgb, again_lab = render_frame(0, (256, 128), sequence_params=params, frame_index=3,
                                        view='rear')
    np.testing.assert_array_equal(again_rgb, rear_rgb)
    np.testing.assert_array_equal(again_lab, rear_lab)


def test_generator_seeds_and_bad_arguments(tmp_path):
    a = render_frame(np.random.default_rng(1), (64, 32))
    b = render_frame(np.random.default_rng(1), (64, 32))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match='domain'):
        render_frame(0, (64, 32), 'winter')
    with pytest.raises(ValueError, match='view'):
        render_frame(0, (64, 32), view='left')
    with pytest.raises(ValueError, match='folder'):
        generate(tmp_path / 'x', 'cityscapes', 'custom8', n_train=1, n_val=1, size=SMALL)
    with pytest.raises(ValueError, match='WxH'):
        parse_size('256-128')
    assert parse_size('320x160') == (320, 160)
    with pytest.raises(ValueError, match='at least 32'):
        generate(tmp_path / 'y', 'cityscapes', 'cityscapes', n_train=1, n_val=1, size=(64, 16))


def test_cli(tmp_path, capsys):
    out = tmp_path / 'cli'
    args = ['--layout', 'folder', '--classes', 'custom8', '--out', str(out), '--train', '2',
            '--val', '1', '--size', '96x48', '--seed', '1', '--quiet']
    assert main(args) == 0
    assert 'seg-synth: 3 frames' in capsys.readouterr().out
    assert len(list((out / 'images' / 'train').glob('*.png'))) == 2
    assert main(args) == 2                              # will not mix two datasets
    assert 'overwrite' in capsys.readouterr().err
    assert main(args + ['--overwrite', '--mask-format', 'rgb']) == 0
    assert main(['--layout', 'folder', '--out', str(tmp_path / 'y'), '--size', '9x9']) == 2


def test_samples_sheet(tmp_path):
    path = tmp_path / 'sheet.png'
    assert main(['--samples-sheet', str(path), '--size', '64x32', '--seed', '2']) == 0
    sheet = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert sheet.shape == (2 * 32, 4 * 64, 3)
    # the label columns hold only class colours (and black for ignore)
    colours = {tuple(c) for c in sheet[:, 64:128].reshape(-1, 3)[:, ::-1].tolist()}
    assert colours <= set(label_lut('cityscapes')[0].colors) | {(0, 0, 0)}
