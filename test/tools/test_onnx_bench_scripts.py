"""The onnxruntime bench scripts (profile_onnx, bench_prelu, bench_int8): one small run each."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / 'bench'


def run(script, *args):
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


@pytest.mark.parametrize('model, dense', [('erfnet_synth.pt', True),
                                          ('espnetv2_camvid.pt', False)])
def test_profile_shares_add_up_by_kind(tmp_path, model, dense):
    proc = run('profile_onnx.py', '--model', str(ROOT / 'models' / model), '--sizes', '128x64',
               '--runs', '3', '--output', str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob('profile_onnx-*.json')
    [result] = json.loads(path.read_text())['results']
    assert result['network_input'] == '128x64' and result['runs_counted'] == 2
    share = result['share']
    assert sum(share.values()) == pytest.approx(1.0, abs=1e-3)
    assert share.get('convolution, group unknown', 0.0) < 0.05  # kernels found their nodes
    # ERFNet's convolutions are dense (3x1, 1x3); ESPNetv2's spatial ones are depthwise.
    assert ('convolution, grouped or depthwise' in share) is not dense
    assert share.get('convolution, dense', 0.0) > 0.0


def test_profile_refuses_a_single_run(tmp_path):
    proc = run('profile_onnx.py', '--runs', '1', '--output', str(tmp_path))
    assert proc.returncode == 2 and '--runs must be at least 2' in proc.stderr


def test_prelu_forms_give_the_same_logits(tmp_path):
    proc = run('bench_prelu.py', '--model', str(ROOT / 'models' / 'espnetv2_camvid.pt'),
               '--sizes', '128x64', '--iterations', '2', '--output', str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob('prelu-*.json')
    [result] = json.loads(path.read_text())['results']
    assert result['logits_max_abs_diff'] == 0.0 and result['labels_equal'] == 1.0
    assert result['prelu_layers'] > 0 and result['speedup_median'] > 0
    assert set(result['forward']) == {'relu_clip', 'onnx_prelu'}


def test_prelu_refuses_a_model_without_prelu(tmp_path):
    proc = run('bench_prelu.py', '--model', str(ROOT / 'models' / 'erfnet_synth.pt'),
               '--sizes', '128x64', '--output', str(tmp_path))
    assert proc.returncode == 2 and 'no PReLU layer' in proc.stderr


def test_int8_bench_compares_the_engines_on_frames_not_calibrated_on(tmp_path):
    frames = ROOT / 'samples' / 'camvid' / 'test'
    proc = run('bench_int8.py', '--model', str(ROOT / 'models' / 'erfnet_synth.pt'),
               '--calibrate', str(frames), '--frames', str(frames), '--sizes', '128x64',
               '--iterations', '2', '--calibration-frames', '4', '--test-frames', '2',
               '--output', str(tmp_path), '--tag', 'smoke')
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob('int8-*-smoke.json')
    report = json.loads(path.read_text())
    [result] = report['results']
    assert result['calibration']['frames'] == {'source': str(frames), 'calibration': 3,
                                               'held_out': 1}
    assert 0.0 <= result['label_agreement'] <= 1.0 and result['speedup_median'] > 0
    assert result['test_frames']['count'] == 2
    assert report['environment']['load_average_1m_at_end'] >= 0
