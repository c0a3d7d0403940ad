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
from seg_training.datasets.build import build_dataset
from seg_training.nets import provenance, provenance_record
from seg_training.nets.checkpoint import load_model, ModelFileError, read_file
from seg_training.synth import generate

ROOT = Path(__file__).resolve().parents[2]
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
    proc = subprocess.run([sys.executable, '-m', 'seg_training.training.loop',
                           '--dataset', 'cityscapes', '--data-root', str(data), '--output-dir',
                           str(out), '--epochs', '1',
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


def test_node_logs_the_provenance_and_warns_only_for_the_synthetic_model(tmp_path):
    from ros_probe import Probe, start_node

    probe = Probe('provenance_probe')
    logs = {}
    try:
        for name, params in (('default', []), ('synth', [f'model:={BUNDLED}'])):
            node = start_node(['device:=cpu', *params], tmp_path / f'{name}.log', probe,
                              ready_topic='/provenance/segmentation/class_table',
                              ros_args=['-r', '__ns:=/provenance'])
            rc = node.stop(timeout=30.0)
            logs[name] = node.log()
            assert rc == 0, logs[name]
    finally:
        probe.close()
    # The default model is a real Cityscapes model: its record, no warning.
    assert ('espnetv2_cityscapes.pt: trained on train cityscapes:train (real, 2975 images'
            in logs['default']), logs['default']
    assert 'has never seen a real image' not in logs['default']
    assert 'UserWarning' not in logs['default']  # the in-memory ONNX export says nothing
    log = logs['synth']
    assert 'erfnet_synth.pt: trained on train cityscapes:train (synthetic' in log, log
    warn = [line for line in log.splitlines() if 'has never seen a real image' in line]
    assert warn and '[WARN]' in warn[0], log


def _with_provenance(src: Path, dst: Path, record, names=None) -> Path:
    obj = read_file(src)
    obj['provenance'] = record
    if names is not None:
        obj['classes']['names'][:len(names)] = names
    torch.save(obj, dst)
    return dst


WRONG_TYPES = {
    'miou text': ({'best_val_miou': '0.9'}, "provenance.best_val_miou is str '0.9'"),
    'miou nan': ({'best_val_miou': float('nan')}, 'provenance.best_val_miou is float nan'),
    'datasets int': ({'datasets': 3}, 'provenance.datasets is int, not a list'),
    'dataset text': ({'datasets': ['city']}, 'provenance.datasets[0] is str, not a mapping'),
    'images': ({'datasets': [dict(REAL, images='800')]}, 'provenance.datasets[0].images is str'),
    'sizes': ({'datasets': [dict(REAL, image_sizes=[[64]])]},
              'provenance.datasets[0].image_sizes is list, not a list of [width, height]'),
    'synthetic': ({'datasets': [dict(REAL, synthetic='no')]},
                  'provenance.datasets[0].synthetic is str'),
    'epochs': ({'epochs': True}, 'provenance.epochs is bool'),
    'real_images': ({'real_images': 1}, 'provenance.real_images is int 1, not true or false'),
    'init': ({'init': 'city.pt'}, 'provenance.init is str, not a mapping'),
    'parent': ({'init': {'source': 'a.pt', 'provenance': {'epochs': 'ten'}}},
               "provenance.init.provenance.epochs is str 'ten'"),
    'record': ('trained well', 'provenance is str, not a mapping'),
}


@pytest.mark.parametrize('case', sorted(WRONG_TYPES))
def test_provenance_fields_of_the_wrong_type_are_refused_at_load(tmp_path, tiny_model_file,
                                                                 case):
    fields, message = WRONG_TYPES[case]
    record = dict({'datasets': [REAL], 'init': None, 'real_images': True}, **fields) if (
        isinstance(fields, dict)) else fields
    path = _with_provenance(tiny_model_file, tmp_path / 'model.pt', record)
    for read in (load_model, provenance.file_provenance):
        with pytest.raises(ModelFileError) as e:
            read(path)
        assert str(e.value).startswith(f'{path}: {message}'), str(e.value)
        assert '\n' not in str(e.value)


def test_a_deep_chain_of_starting_models_is_refused(tmp_path, tiny_model_file):
    record = {'datasets': [REAL], 'real_images': True, 'init': None}
    for i in range(provenance_record.MAX_INIT_DEPTH + 1):
        record = {'datasets': [SYNTH], 'init': provenance.init_record(f'{i}.pt', record)}
    path = _with_provenance(tiny_model_file, tmp_path / 'model.pt', record)
    with pytest.raises(ModelFileError, match='nested more than 32 deep'):
        load_model(path)
    provenance.check_provenance(record['init']['provenance'])  # one level less is fine


FORGED = '\n[FATAL] [1700000000.000000000] [segmentation_node]: forged'
ANSI = '\x1b[2J\x1b[31mred'
LONG = 'y' * 2_000_000


def _hostile_metadata_model(src: Path, dst: Path) -> Path:
    """Write a model whose class names and provenance hold forged lines, ANSI codes, 2 MB."""
    record = {'datasets': [dict(REAL, dataset='folder' + FORGED, root=LONG, split=ANSI)],
              'init': provenance.init_record('parent.pt' + FORGED, None), 'real_images': True,
              'note': ANSI + FORGED, 'source': LONG}
    return _with_provenance(src, dst, record, names=['road' + FORGED, ANSI, LONG])


def _check_log_text(text: str) -> None:
    assert '\x1b' not in text
    assert not [line for line in text.splitlines() if 'forged' in line and (
        line.startswith('[FATAL]') or line.startswith('forged'))], text[:3000]
    assert max(len(line) for line in text.splitlines()) < 5000
    assert r'\n[FATAL] [1700000000.000000000] [segmentation_node]: forged' in text  # escaped
    assert r'\x1b[2J\x1b[31mred' in text
    assert '(2000000 characters)' in text


def test_seg_predict_logs_model_metadata_escaped_and_bounded(tmp_path, tiny_model_file):
    model = _hostile_metadata_model(tiny_model_file, tmp_path / 'hostile.pt')
    cv2.imwrite(str(tmp_path / 'frame.png'), np.full((32, 64, 3), 90, np.uint8))
    done = subprocess.run([sys.executable, '-m', 'seg_perception.predict', '--model', str(model),
                           '--device', 'cpu', '--output-dir', str(tmp_path / 'out'),
                           str(tmp_path / 'frame.png')], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_log_text(done.stderr)
    assert 'classes [road\\n[FATAL]' in done.stderr  # class names too


def test_node_logs_model_metadata_escaped_and_bounded(tmp_path, tiny_model_file):
    from ros_probe import Probe, start_node

    model = _hostile_metadata_model(tiny_model_file, tmp_path / 'hostile.pt')
    probe = Probe('metadata_probe')
    try:
        node = start_node([f'model:={model}', 'device:=cpu'], tmp_path / 'node.log', probe,
                          ready_topic='/metadata/segmentation/class_table',
                          ros_args=['-r', '__ns:=/metadata'])
        rc = node.stop(timeout=30.0)
    finally:
        probe.close()
    log = node.log()
    assert rc == 0, log[-3000:]
    _check_log_text(log)
