"""bench/distill_erfnet.py on a tiny CamVid folder: the Cityscapes view, the run, its scores."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
import torch

from file_module import load_file
from seg_training.datasets.build import build_dataset
from seg_training.datasets.formats import CAMVID
from seg_training.nets.espnetv2 import ESPNetv2, ESPNetv2Config
from test_camvid_transfer import write_camvid

ROOT = Path(__file__).resolve().parents[2]


def test_camvid_view_reads_camvid_masks_as_cityscapes_train_ids(tmp_path):
    bench = load_file(ROOT / 'bench' / 'distill_erfnet.py')
    camvid = write_camvid(tmp_path / 'camvid')
    view = bench.camvid_view(camvid, tmp_path / 'view')
    assert bench.camvid_view(camvid, tmp_path / 'view') == view  # a second call keeps it
    ds = build_dataset('folder', view, 'train')
    assert ds.classes.names[:3] == ('road', 'sidewalk', 'building') and len(ds) == 6
    _, mask = ds[0]
    original = np.asarray(Image.open(camvid / 'trainannot' / 'seq_0000.png'))
    names = ds.classes.names
    assert (mask[original == CAMVID.names.index('road')] == names.index('road')).all()
    assert (mask[original == CAMVID.names.index('sky')] == names.index('sky')).all()
    assert (mask[original == CAMVID.names.index('car')] == names.index('car')).all()
    assert (mask[original == 11] == 255).all()  # void stays ignored


def write_cityscapes_frame(root: Path) -> Path:
    """One 64x32 Cityscapes-layout val frame: sky over road, train ids."""
    (root / 'leftImg8bit' / 'val' / 'town').mkdir(parents=True)
    (root / 'gtFine' / 'val' / 'town').mkdir(parents=True)
    ids = np.zeros((32, 64), np.uint8)  # road
    ids[:12] = 10  # sky
    rgb = np.where(ids[..., None] == 10, [70, 130, 180], [128, 64, 128]).astype(np.uint8)
    Image.fromarray(rgb).save(root / 'leftImg8bit' / 'val' / 'town' / 'town_0_leftImg8bit.png')
    Image.fromarray(ids).save(root / 'gtFine' / 'val' / 'town' /
                              'town_0_gtFine_labelTrainIds.png')
    return root


def test_distils_a_student_and_scores_it_with_its_teacher(tmp_path):
    bench = load_file(ROOT / 'bench' / 'distill_erfnet.py')
    camvid = write_camvid(tmp_path / 'camvid')
    cityscapes = write_cityscapes_frame(tmp_path / 'cityscapes')
    torch.manual_seed(0)
    teacher = tmp_path / 'espnetv2_s_0.5_city.pth'
    torch.save(ESPNetv2(ESPNetv2Config(20, 0.5)).state_dict(), teacher)  # the authors' layout
    argv = ['--camvid-root', str(camvid), '--work-dir', str(tmp_path / 'work'), '--output',
            str(tmp_path / 'results'), '--teacher', str(teacher), '--epochs', '1',
            '--batch-size', '4', '--size', '48x32', '--workers', '0', '--cityscapes-root',
            str(cityscapes)]
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / 'results' / 'results.json').read_text())
    assert results['train']['epochs'] == 1 and results['budget']['epochs'] == 1
    for name in ('student', 'teacher'):
        camvid_test = results['scores'][name]['camvid_test']
        assert 0.0 <= camvid_test['miou'] <= 1.0 and camvid_test['num_images'] == 3
        assert camvid_test['input_size'] == [48, 32]
        assert results['scores'][name]['cityscapes_val']['num_images'] == 1
    agreement = results['scores']['student']['agreement_with_teacher']
    assert agreement['frames'] == 1 and 0.0 <= agreement['label_agreement'] <= 1.0
    student = torch.load(tmp_path / 'work' / 'run' / 'best.pt', weights_only=True)
    assert student['arch'] == 'erfnet' and len(student['classes']['names']) == 19
    assert student['provenance']['teacher']  # the teacher is on record
    assert 'ERFNet, distilled' in (tmp_path / 'results' / 'results.md').read_text()
