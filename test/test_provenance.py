"""Model files say what they were trained on; a model that never saw a real image is flagged."""

import json
import logging
from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from seg_perception.predict import main as seg_predict
from seg_training import provenance
from seg_training.checkpoint import load_model, ModelFileError, read_file
from seg_training.data import build_dataset
from seg_training.synth import generate

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / 'models' / 'erfnet_synth.pt'
SYNTH = {'role': 'train', 'dataset': 'cityscapes', 'synthetic': True}
REAL = {'role': 'train', 'dataset': 'folder', 'synthetic': False}


def test_real_images_follows_the_datasets_and_the_starting_model():
    assert provenance.real_images([SYNTH], None) is False
    assert provenance.real_images([SYNTH, REAL], None) is True
    real_parent = provenance.init_record('city.pt', {'real_images': True})
    synth_parent = provenance.init_record('synth.pt', {'real_images': False})
    unknown_parent = provenance.init_record('old.pt', None)
    assert provenance.real_images([SYNTH], real_parent) is True
    assert provenance.real_images([SYNTH], synth_parent) is False
    assert provenance.real_images([SYNTH], unknown_parent) is None
    assert provenance.real_images([REAL], unknown_parent) is True
    assert provenance.official_provenance()['real_images'] is True


def test_seg_synth_output_is_detected_as_synthetic(tmp_path):
    generate(tmp_path / 'synth', layout='cityscapes', n_train=2, n_val=1, size=(64, 32))
    assert provenance.dataset_is_synthetic(tmp_path / 'synth')
    record = provenance.dataset_record(build_dataset('cityscapes', tmp_path / 'synth', 'train'),
                                       'cityscapes', 'train')
    assert record['synthetic'] is True and record['images'] == 2
    assert record['image_sizes'] == [[64, 32]]
    (tmp_path / 'synth' / provenance.SYNTH_MARKER).unlink()
    assert not provenance.dataset_is_synthetic(tmp_path / 'synth')


def test_bundled_model_records_synthetic_training_with_unchanged_weights():
    info = load_model(BUNDLED)[1]
    prov = info.provenance
    assert prov['real_images'] is False and prov['epochs'] == 15
    assert all(d['synthetic'] for d in prov['datasets'])
    assert prov['best_val_miou'] == pytest.approx(info.metrics['val_miou'])
    # the record is the documented JSON file, exactly
    assert prov == json.loads((ROOT / 'models' / 'erfnet_synth.provenance.json').read_text())


def test_setting_provenance_keeps_the_weights_bit_identical(tmp_path, tiny_model_file):
    path = tmp_path / 'model.pt'
    path.write_bytes(Path(tiny_model_file).read_bytes())
    before = read_file(path)
    record = {'datasets': [REAL], 'init': None, 'real_images': True}
    provenance.set_provenance(path, record)
    after = read_file(path)
    assert after['provenance'] == record
    assert set(after) - set(before) == {'provenance'}
    for k, v in before['state_dict'].items():
        assert after['state_dict'][k].dtype == v.dtype and torch.equal(after['state_dict'][k], v)
    official = tmp_path / 'erfnet_pretrained.pth'
    torch.save({f'module.{k}': v for k, v in before['state_dict'].items()}, official)
    with pytest.raises(ModelFileError, match='erfnet_pretrained.pth: not a seg_perception'):
        provenance.set_provenance(official, record)
    with pytest.raises(ValueError, match='real_images'):
        provenance.set_provenance(path, {'datasets': []})


def test_seg_predict_warns_that_the_bundled_model_never_saw_a_real_image(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / 'frame.png'), np.full((64, 128, 3), 90, np.uint8))
    with caplog.at_level(logging.INFO):
        assert seg_predict(['--model', str(BUNDLED), '--device', 'cpu', '--output-dir',
                            str(tmp_path / 'out'), str(tmp_path / 'frame.png')]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('has never seen a real image' in m for m in warnings), warnings
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any('train cityscapes:train (synthetic, 800 images, 256x128)' in m and
               '15 epochs' in m and 'best val mIoU 0.495' in m for m in infos), infos


def test_seg_predict_does_not_warn_for_a_model_trained_on_real_images(tmp_path, caplog,
                                                                      tiny_model_file):
    path = tmp_path / 'real.pt'
    path.write_bytes(Path(tiny_model_file).read_bytes())
    provenance.set_provenance(path, {'datasets': [REAL], 'init': None, 'real_images': True})
    cv2.imwrite(str(tmp_path / 'frame.png'), np.full((32, 64, 3), 90, np.uint8))
    with caplog.at_level(logging.INFO):
        assert seg_predict(['--model', str(path), '--device', 'cpu', '--output-dir',
                            str(tmp_path / 'out'), str(tmp_path / 'frame.png')]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.timeout(300)
def test_seg_train_on_seg_synth_data_records_synthetic_provenance(tmp_path):
    data = tmp_path / 'synth'
    generate(data, layout='cityscapes', n_train=2, n_val=1, size=(64, 32))
    out = tmp_path / 'run'
    proc = subprocess.run([sys.executable, '-m', 'seg_training.train', '--dataset', 'cityscapes',
                           '--data-root', str(data), '--output-dir', str(out), '--epochs', '1',
                           '--batch-size', '2', '--size', '64x32', '--workers', '0',
                           '--device', 'cpu', '--seed', '0', '--class-weighting', 'none'],
                          capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    for name in ('best.pt', 'last.pt'):
        prov = load_model(out / name)[1].provenance
        assert prov['real_images'] is False, name
        assert [(d['role'], d['synthetic'], d['images']) for d in prov['datasets']] == [
            ('train', True, 2), ('val', True, 1)]
        assert prov['epochs'] == 1
        assert prov['best_val_miou'] == pytest.approx(summary['best_val_miou'])
    assert load_model(out / 'best.pt')[1].resize.method == 'area'


def test_node_logs_the_provenance_and_warns_for_the_bundled_model(tmp_path):
    from ros_probe import Probe, start_node

    probe = Probe('provenance_probe')
    try:
        node = start_node(['device:=cpu'], tmp_path / 'node.log', probe,  # default model
                          ready_topic='/provenance/segmentation/class_table',
                          ros_args=['-r', '__ns:=/provenance'])
        rc = node.stop(timeout=30.0)
    finally:
        probe.close()
    log = node.log()
    assert rc == 0, log
    assert 'erfnet_synth.pt: trained on train cityscapes:train (synthetic' in log, log
    warn = [line for line in log.splitlines() if 'has never seen a real image' in line]
    assert warn and '[WARN]' in warn[0], log
