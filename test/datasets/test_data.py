"""Datasets: Cityscapes label mapping, the folder dataset's three mask kinds, errors by path."""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
import pytest
import yaml

from seg_training.base.classes import cityscapes_label_to_train_id, cityscapes_table, CUSTOM8
from seg_training.datasets.build import (build_dataset, CityscapesDataset, FolderDataset,
                                         JointDataset)
from seg_training.datasets.segmentation import DatasetError, read_classes_yaml
from training_data import CITYSCAPES_LABEL_IDS, SCENE, write_cityscapes, write_folder


def _label_ids(root: Path, img_path: Path) -> np.ndarray:
    stem = img_path.name[:-len('_leftImg8bit.png')]
    gt = root / 'gtFine' / img_path.parts[-3] / img_path.parent.name
    return cv2.imread(str(gt / f'{stem}_gtFine_labelIds.png'), cv2.IMREAD_UNCHANGED)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    root = write_cityscapes(tmp_path / 'cs', n_train=3, n_val=2)
    ds = CityscapesDataset(root, 'train')
    assert len(ds) == 3
    assert ds.classes == cityscapes_table()
    lut = cityscapes_label_to_train_id()
    names = cityscapes_table().names
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (32, 64, 3) and image.dtype == np.uint8
        label_ids = _label_ids(root, ds.samples[i][0])
        np.testing.assert_array_equal(mask, lut[label_ids])
        assert mask[0, 0] == 255  # 'unlabeled' (id 0) is ignored
        road = label_ids == CITYSCAPES_LABEL_IDS['road']
        car = label_ids == CITYSCAPES_LABEL_IDS['car']
        assert road.any() and car.any()
        assert set(mask[road].tolist()) == {names.index('road')}
        assert set(mask[car].tolist()) == {names.index('car')}


def test_cityscapes_prefers_label_train_ids(tmp_path):
    root = write_cityscapes(tmp_path / 'cs', n_train=2, n_val=1, train_ids=True)
    ds = CityscapesDataset(root, 'val')
    path = ds.samples[0][1]
    assert path.name.endswith('_gtFine_labelTrainIds.png')
    # Overwrite the trainIds file: the loader must read it, not map the labelIds again.
    marker = np.full((32, 64), 5, np.uint8)
    cv2.imwrite(str(path), marker)
    np.testing.assert_array_equal(ds[0][1], marker)


def test_cityscapes_missing_ground_truth_names_path(tmp_path):
    root = write_cityscapes(tmp_path / 'cs', n_train=2, n_val=1)
    gt = next((root / 'gtFine' / 'train').rglob('*_labelIds.png'))
    gt.unlink()
    with pytest.raises(DatasetError, match=gt.name):
        CityscapesDataset(root, 'train')
    with pytest.raises(DatasetError, match='leftImg8bit'):
        CityscapesDataset(root, 'test')


@pytest.mark.parametrize('mask_format', ['index', 'palette', 'rgb'])
def test_folder_mask_formats_decode_to_the_same_classes(tmp_path, mask_format):
    root = write_folder(tmp_path / mask_format, n_train=3, n_val=1, mask_format=mask_format)
    ref = write_folder(tmp_path / 'ref', n_train=3, n_val=1, mask_format='index')
    ds, ref_ds = FolderDataset(root, 'train'), FolderDataset(ref, 'train')
    assert ds.classes.names == CUSTOM8.names
    assert ds.classes.colors == CUSTOM8.colors
    for i in range(len(ds)):
        image, mask = ds[i]
        ref_mask = cv2.imread(str(ref_ds.samples[i][1]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, ref_mask)
        assert mask[0, 0] == 255
        assert set(np.unique(mask).tolist()) <= set(range(8)) | {255}


def test_folder_unmapped_values_are_ignored(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=1, n_val=1)
    with open(root / 'classes.yaml') as f:
        doc = yaml.safe_load(f)
    doc['classes'][7]['values'] = [7, 40]  # vehicle from two mask values
    doc['classes'][6]['values'] = [60]     # person pixels (value 6) are now unmapped
    with open(root / 'classes.yaml', 'w') as f:
        yaml.safe_dump(doc, f)
    path = root / 'masks' / 'train' / 'frame_0000.png'
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    raw[1, :5] = 40
    raw[2, :5] = 99  # no class claims 99
    cv2.imwrite(str(path), raw)
    _, mask = FolderDataset(root, 'train')[0]
    assert (mask[1, :5] == 7).all()
    assert (mask[2, :5] == 255).all()
    assert (mask[raw == SCENE.index('person')] == 255).all()


def test_folder_jpg_images_and_subsampling(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=6, n_val=1, image_ext='.jpg')
    ds = build_dataset('folder', root, 'train', max_samples=3)
    assert [p.name for p, _ in ds.samples] == ['frame_0000.jpg', 'frame_0002.jpg',
                                               'frame_0004.jpg']
    assert ds[1][0].shape == (32, 64, 3)


def test_folder_size_mismatch_names_mask(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=2, n_val=1)
    path = root / 'masks' / 'train' / 'frame_0001.png'
    cv2.imwrite(str(path), np.zeros((16, 64), np.uint8))
    ds = FolderDataset(root, 'train')
    with pytest.raises(DatasetError, match=f'{path}.*differs'):
        ds[1]


def test_folder_missing_mask_and_unreadable_image_name_paths(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=2, n_val=1)
    (root / 'masks' / 'train' / 'frame_0001.png').unlink()
    with pytest.raises(DatasetError, match='frame_0001.png: mask of .*frame_0001.png'):
        FolderDataset(root, 'train')
    bad = root / 'images' / 'val' / 'frame_0000.png'
    bad.write_bytes(b'not a png at all')
    with pytest.raises(DatasetError, match=str(bad)):
        FolderDataset(root, 'val')[0]


def test_folder_palette_mask_that_is_not_palette_names_path(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=1, n_val=1, mask_format='palette')
    path = root / 'masks' / 'val' / 'frame_0000.png'
    Image.new('L', (64, 32)).save(path)
    with pytest.raises(DatasetError, match=f'{path}.*mode L'):
        FolderDataset(root, 'val')[0]


def test_folder_index_mask_in_colour_names_path(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=1, n_val=1)
    path = root / 'masks' / 'val' / 'frame_0000.png'
    cv2.imwrite(str(path), np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match=f'{path}.*single-channel'):
        FolderDataset(root, 'val')[0]


def test_classes_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / 'classes.yaml'
    path.write_text('classes: [{name: a, color: [1, 2, 3]}]\nmask_format: jpeg\n')
    with pytest.raises(DatasetError, match=f'{path}.*mask_format'):
        read_classes_yaml(path)
    path.write_text('classes:\n - {name: a, color: [1, 2, 3], values: [1]}\n'
                    ' - {name: b, color: [4, 5, 6], values: [1]}\n')
    with pytest.raises(DatasetError, match="value 1 is claimed by classes 'a' and 'b'"):
        read_classes_yaml(path)
    path.write_text('classes:\n - {name: a, color: [1, 2]}\n')
    with pytest.raises(DatasetError, match=r'classes\[0\]\.color'):
        read_classes_yaml(path)
    with pytest.raises(DatasetError, match='classes.yaml not found'):
        read_classes_yaml(tmp_path / 'nowhere' / 'classes.yaml')


def test_label_histogram_counts_every_labelled_pixel(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=5, n_val=1)
    ds = FolderDataset(root, 'train')
    expected = np.zeros(8, np.int64)
    for i in range(len(ds)):
        mask = ds[i][1]
        expected += np.bincount(mask[mask != 255], minlength=8)
    np.testing.assert_array_equal(ds.label_histogram(workers=2), expected)
    np.testing.assert_array_equal(ds.label_histogram(workers=1), expected)
    assert expected.sum() == 5 * (64 * 32 - 1)


def test_build_dataset_applies_transform_and_rejects_unknown_kind(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=1, n_val=1)
    ds = build_dataset('folder', root, 'val', transform=lambda im, m: (im.shape, m.shape))
    assert ds[0] == ((32, 64, 3), (32, 64))
    with pytest.raises(ValueError, match='unknown dataset kind'):
        build_dataset('kitti', root, 'val')


def test_joint_dataset_concatenates_domains(tmp_path):
    a = FolderDataset(write_folder(tmp_path / 'a', n_train=3, n_val=1, seed=1), 'train')
    b = FolderDataset(write_folder(tmp_path / 'b', n_train=2, n_val=1, seed=2,
                                   mask_format='rgb'), 'train')
    joint = JointDataset([a, b])
    assert len(joint) == 5 and joint.classes == CUSTOM8
    np.testing.assert_array_equal(joint[4][1], b[1][1])
    np.testing.assert_array_equal(joint.label_histogram(),
                                  a.label_histogram() + b.label_histogram())
    joint.transform = lambda im, m: m.sum()
    assert a.transform is joint.transform and b[0] == joint[3]
    some = JointDataset([a, b], max_samples=3)  # spread over the concatenation
    assert some.samples == [a.samples[0], a.samples[1], b.samples[0]]
    other = FolderDataset(write_folder(tmp_path / 'c', n_train=1, n_val=1), 'train')
    other.classes = cityscapes_table()
    with pytest.raises(DatasetError, match='differ'):
        JointDataset([a, other])
