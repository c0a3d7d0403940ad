"""The onnxruntime_int8 engine: calibration stored in the model file, its checks and errors."""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

from seg_perception import bag, predict
from seg_perception.engines import build_engine, EngineError, export_onnx, ONNX_EXPORTER
from seg_perception.engines import ONNX_OPSET, resolve
from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_perception.ros_types import camera_namespace
from seg_training import export as seg_export
from seg_training.evaluation import seg_eval
from seg_training.nets import calibration
from seg_training.nets.checkpoint import (load_model, ModelFileError, ModelInfo, read_file,
                                          state_hash)
from seg_training.synth import render_frame
from test_bag import IMAGE, pixels_of, RAW_CAMERAS, read_bag, seg_bag_args, write_bag
from training_data import write_folder

CPU = torch.device('cpu')
MODEL = Path(__file__).resolve().parents[2] / 'models' / 'erfnet_synth.pt'  # trained, synthetic
SIZE = (128, 64)  # (W, H) the tests run it at: small, still the trained network's task
MIN_TINY_AGREEMENT = 0.95  # int8 vs fp32 labels of that network at that size


def synthetic_inputs(info: ModelInfo, seeds) -> torch.Tensor:
    """Synthetic street frames (the trained network's domain) as inputs (B, 3, H, W)."""
    prep = info.preprocessing(SIZE)
    return torch.stack([prep.image(render_frame(s, (256, 128))[0]) for s in seeds])


@pytest.fixture(scope='module')
def net_and_record():
    net, info = load_model(MODEL)
    frames = [x[None].numpy() for x in synthetic_inputs(info, range(8))]
    record = calibration.make_record(export_onnx(net, SIZE[1], SIZE[0]), frames, 'minmax',
                                     ONNX_OPSET, ONNX_EXPORTER, state_hash(net), SIZE,
                                     'synthetic')
    return net, info, record


def with_calibration(info: ModelInfo, record) -> ModelInfo:
    return dataclasses.replace(info, calibration=record)


def test_int8_engine_agrees_with_fp32_on_a_trained_network(net_and_record):
    net, info, record = net_and_record
    assert record['frames'] == {'source': 'synthetic', 'calibration': 6, 'held_out': 2}
    assert record['agreement'] >= MIN_TINY_AGREEMENT
    engine = build_engine(copy.deepcopy(net), with_calibration(info, record), CPU, 'fp32',
                          'onnxruntime_int8', input_size=SIZE)
    assert engine.name == 'onnxruntime_int8' and 'int8' in engine.describe()
    x = synthetic_inputs(info, range(200, 204))  # frames the calibration did not see
    with torch.inference_mode():
        expected = net(x)  # (4, 3, H, W)
    y = engine(x)
    assert y.shape == expected.shape == (4, info.num_classes, 64, 128)
    assert y.dtype == torch.float32
    agree = (y.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agree >= MIN_TINY_AGREEMENT
    assert not torch.equal(y, expected)  # it really is the quantized network


def test_int8_without_calibration_names_the_command(net_and_record):
    net, info, _ = net_and_record
    assert info.calibration is None
    with pytest.raises(EngineError, match=r'has none: add it with seg-export --model m\.pt '
                       r'--calibrate FRAMES_DIR --output m\.pt'):
        build_engine(copy.deepcopy(net), info, CPU, 'fp32', 'onnxruntime_int8', source='m.pt')


def test_stale_calibration_names_the_command(net_and_record):
    net, info, record = net_and_record
    other = copy.deepcopy(net)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # other weights: the ranges were not measured there
    with pytest.raises(EngineError, match=r'm\.pt: its int8 calibration was made for other '
                       r'weights; recalibrate with: seg-export --model m\.pt --calibrate'):
        build_engine(other, with_calibration(info, record), CPU, 'fp32', 'onnxruntime_int8',
                     source='m.pt')
    moved = dict(record, graph_sha256='0' * 64)  # another exporter's graph
    with pytest.raises(EngineError, match=r'another ONNX graph .*calibrated at 128x64 .*'
                       r'recalibrate with: seg-export --model m\.pt'):
        build_engine(copy.deepcopy(net), with_calibration(info, moved), CPU,
                     'fp32', 'onnxruntime_int8', source='m.pt')
    with pytest.raises(EngineError, match=r'made for ONNX opset 11; recalibrate'):
        build_engine(copy.deepcopy(net), with_calibration(info, dict(record, opset=11)), CPU,
                     'fp32', 'onnxruntime_int8')


def test_int8_runs_on_the_cpu_with_fp32_input_only():
    with pytest.raises(EngineError, match='onnxruntime_int8 runs on the CPU only'):
        resolve('onnxruntime_int8', torch.device('cuda'), 'fp32')
    with pytest.raises(EngineError, match='onnxruntime_int8 runs with fp32 input only, not fp16'):
        resolve('onnxruntime_int8', CPU, 'fp16')


def test_auto_picks_int8_only_when_calibrated_within_bound(net_and_record):
    net, info, record = net_and_record
    fast = dict(record, speedup=1.2)
    assert resolve('auto', CPU, 'fp32', dict(fast, agreement=0.98)) == 'onnxruntime_int8'
    assert resolve('auto', CPU, 'fp32', dict(fast, agreement=0.979)) == 'onnxruntime'
    # Exact enough, but measured no faster (ESPNetv2 on this CPU): fp32.
    assert resolve('auto', CPU, 'fp32', dict(fast, agreement=0.99, speedup=1.19)) == 'onnxruntime'
    assert resolve('auto', CPU, 'fp32', None) == 'onnxruntime'
    assert resolve('auto', CPU, 'fp16', record) == 'none'
    assert resolve('auto', torch.device('cuda'), 'fp32', record) == 'channels_last'
    good = with_calibration(info, dict(fast, agreement=0.99))
    engine = build_engine(copy.deepcopy(net), good, CPU, 'fp32', 'auto', input_size=SIZE)
    assert engine.name == 'onnxruntime_int8'
    low = build_engine(copy.deepcopy(net), with_calibration(info, dict(fast, agreement=0.9)),
                       CPU, 'fp32', 'auto')
    assert low.name == 'onnxruntime'
    # A calibration that no longer fits: auto runs fp32 (with a warning) instead of failing.
    other = copy.deepcopy(net)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    assert build_engine(other, good, CPU, 'fp32', 'auto').name == 'onnxruntime'


def write_frames(folder, count, size=(96, 48)):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(render_frame(i, size)[0]).save(folder / f'{i:03d}.png')
    return folder


@pytest.fixture(scope='module')
def source_file(tmp_path_factory, tiny_model_file):
    """Return the tiny model file with a provenance record."""
    d = read_file(tiny_model_file)
    d['provenance'] = {'epochs': 0, 'note': 'random weights'}
    path = tmp_path_factory.mktemp('source') / 'tiny.pt'
    torch.save(d, path)
    return path


@pytest.fixture(scope='module')
def calibrated_file(tmp_path_factory, source_file):
    tmp = tmp_path_factory.mktemp('int8')
    frames = write_frames(tmp / 'frames', 5)
    out = tmp / 'tiny_int8.pt'
    assert seg_export.main(['--model', str(source_file), '--calibrate', str(frames),
                            '--calibration-source', 'five seg-synth frames',
                            '--output', str(out)]) == 0
    return out


def test_calibration_round_trip_through_the_model_file(calibrated_file, source_file):
    raw = torch.load(calibrated_file, map_location='cpu', weights_only=True)
    record = raw['calibration']
    calibration.check_calibration(record)
    assert record['input_size'] == [64, 32] and record['method'] == 'minmax'
    assert record['frames']['calibration'] + record['frames']['held_out'] == 5
    assert record['frames']['held_out'] == 1 and 0.0 <= record['agreement'] <= 1.0
    assert record['speedup'] > 0
    assert record['frames']['source'] == 'five seg-synth frames'
    assert record['op_types'] == ['Conv', 'ConvTranspose']
    original = read_file(source_file)
    assert set(raw) == set(original) | {'calibration'}
    assert raw['provenance'] == dict(original['provenance'], calibration=(
        'int8 ranges (minmax, Conv/ConvTranspose) from 4 frames of five seg-synth frames at '
        f'64x32; int8 vs fp32 labels agree on {100 * record["agreement"]:.2f} % of 1 '
        f'held-out frames, int8 {record["speedup"]:.2f}x as fast'))
    for k, v in original['state_dict'].items():  # the weights are the same bits
        assert torch.equal(raw['state_dict'][k], v)
    model, info = load_model(calibrated_file)
    assert info.calibration == record
    assert record['state_sha256'] == state_hash(model)
    # The stored ranges run: the int8 engine builds from the file alone.
    engine = build_engine(model, info, CPU, 'fp32', 'onnxruntime_int8')
    assert engine(torch.zeros(1, 3, 32, 64)).shape == (1, info.num_classes, 32, 64)


@pytest.mark.parametrize('path, value, says', [
    (('agreement',), 'high', "calibration.agreement is str 'high', not a number in [0, 1]"),
    (('agreement',), 1.5, 'calibration.agreement is float 1.5, not a number in [0, 1]'),
    (('graph_sha256',), None, 'calibration.graph_sha256 is missing'),
    (('speedup',), 0, 'calibration.speedup is int 0, not a number > 0'),
    (('method',), 'entropy', "calibration.method is str 'entropy', not one of minmax"),
    (('input_size',), [64], 'calibration.input_size is list, not [width, height]'),
    (('frames', 'held_out'), '1', "calibration.frames.held_out is str '1', not an integer"),
    (('ranges', 'n0.0'), [2.0, 1.0], "calibration.ranges['n0.0'] is not [low, high]"),
    (('ranges', '/conv/Conv_output_0'), [0.0, 1.0], "calibration.ranges has key "
     "'/conv/Conv_output_0', not in<i> or n<i>.<j>"),
    (('version',), 2, 'calibration.version 2 is newer than this software reads'),
])
def test_a_bad_calibration_field_is_named(tmp_path, calibrated_file, path, value, says):
    d = torch.load(calibrated_file, map_location='cpu', weights_only=True)
    holder = d['calibration']
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    bad = tmp_path / 'bad.pt'
    torch.save(d, bad)
    with pytest.raises(ModelFileError) as e:
        load_model(bad)
    assert str(e.value) == f'{bad}: {says}' or str(e.value).startswith(f'{bad}: {says}')


def test_calibrate_refuses_a_folder_without_images(tmp_path, tiny_model_file):
    empty = tmp_path / 'frames'
    empty.mkdir()
    (empty / 'notes.txt').write_text('no frames here')
    out = tmp_path / 'out.pt'
    with pytest.raises(SystemExit) as e:
        seg_export.main(['--model', str(tiny_model_file), '--calibrate', str(empty),
                         '--output', str(out)])
    assert e.value.code == (f'seg-export: error: --calibrate {empty}: no .png/.jpg/.jpeg '
                            'images in it (nor under leftImg8bit/ or images/ of a dataset root)')
    assert not out.exists()


def test_calibrate_reads_a_cityscapes_root(tmp_path):
    city = tmp_path / 'leftImg8bit' / 'train' / 'aachen'
    city.mkdir(parents=True)
    for name in ('aachen_000000_000019_leftImg8bit.png', 'aachen_000001_000019_leftImg8bit.png'):
        Image.fromarray(render_frame(0, (64, 32))[0]).save(city / name)
    (tmp_path / 'gtFine').mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(tmp_path / 'gtFine' / 'x_labelIds.png')
    assert [p.name for p in seg_export.calibration_frames(tmp_path)] == [
        'aachen_000000_000019_leftImg8bit.png', 'aachen_000001_000019_leftImg8bit.png']


def test_seg_predict_int8_without_calibration_exits_2(tmp_path, tiny_model_file, caplog):
    image = tmp_path / 'frame.png'
    Image.fromarray(render_frame(0, (64, 32))[0]).save(image)
    code = predict.main(['--model', str(tiny_model_file), '--accelerate', 'onnxruntime_int8',
                         '--device', 'cpu', '--output-dir', str(tmp_path / 'out'), str(image)])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert len(errors) == 1 and '\n' not in errors[0]
    assert 'onnxruntime_int8 needs a model file with an int8 calibration' in errors[0]
    assert f'seg-export --model {tiny_model_file} --calibrate FRAMES_DIR' in errors[0]
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())


@pytest.fixture(scope='module')
def folder_data(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('int8_data') / 'data', n_train=1, n_val=3)


def test_seg_eval_scores_the_int8_engine_and_names_what_ran(tmp_path, calibrated_file,
                                                            folder_data):
    reports = {}
    for accelerate in ('onnxruntime', 'onnxruntime_int8', 'auto'):
        out = tmp_path / f'{accelerate}.json'
        assert seg_eval.main(['--model', str(calibrated_file), '--dataset', 'folder',
                              '--data-root', str(folder_data), '--device', 'cpu',
                              '--workers', '0', '--accelerate', accelerate,
                              '--json', str(out)]) == 0
        reports[accelerate] = json.loads(out.read_text())
    assert reports['onnxruntime']['engine'].startswith('onnxruntime (CPU provider')
    assert reports['onnxruntime_int8']['engine'].startswith('onnxruntime_int8 (CPU provider')
    assert 'int8 QDQ, minmax calibration' in reports['onnxruntime_int8']['engine']
    record = load_model(calibrated_file)[1].calibration
    picked = resolve('auto', CPU, 'fp32', calibration_record=record)
    assert reports['auto']['accelerate'] == 'auto'
    assert reports['auto']['engine'].split(' ')[0] == picked  # what auto chose, not 'auto'
    n = reports['onnxruntime']['num_pixels']
    assert n > 0 and reports['onnxruntime_int8']['num_pixels'] == n


def test_seg_eval_int8_without_calibration_names_the_command(source_file, folder_data):
    with pytest.raises(SystemExit) as e:
        seg_eval.main(['--model', str(source_file), '--dataset', 'folder', '--data-root',
                       str(folder_data), '--device', 'cpu', '--workers', '0',
                       '--accelerate', 'onnxruntime_int8'])
    assert str(e.value.code).startswith('seg-eval: error: accelerate onnxruntime_int8 needs '
                                        'a model file with an int8 calibration')
    assert f'seg-export --model {source_file} --calibrate FRAMES_DIR' in str(e.value.code)


def test_seg_bag_runs_the_int8_engine_of_a_calibrated_file(tmp_path, calibrated_file,
                                                           source_file, capsys):
    expected = write_bag(tmp_path / 'drive', 'mcap')
    out = tmp_path / 'out'
    assert bag.main(seg_bag_args(calibrated_file, tmp_path / 'drive', out,
                                 '--accelerate', 'onnxruntime_int8')) == 0
    said = capsys.readouterr().out
    assert '(onnxruntime_int8 (CPU provider' in said and f'wrote {out}' in said
    written = read_bag(out)[0]
    int8 = SegmentationPipeline.from_file(str(calibrated_file), device='cpu',
                                          accelerate='onnxruntime_int8', warmup=False)
    topic = RAW_CAMERAS[0][0]
    labels = written[f'{camera_namespace(topic, IMAGE)}/segmentation/labels']
    assert len(labels) == len(expected[topic])
    for (_, _, pixels, enc), (_, msg, _) in zip(expected[topic], labels):
        want = int8([Frame(pixels, enc)], Outputs(labels=True, color=False, overlay=False))
        np.testing.assert_array_equal(pixels_of(msg)[..., 0], want[0].labels)
    refused = tmp_path / 'refused'
    assert bag.main(seg_bag_args(source_file, tmp_path / 'drive', refused,
                                 '--accelerate', 'onnxruntime_int8')) == 1
    err = capsys.readouterr().err
    assert 'onnxruntime_int8 needs a model file with an int8 calibration' in err
    assert f'seg-export --model {source_file} --calibrate FRAMES_DIR' in err
    assert not refused.exists()
