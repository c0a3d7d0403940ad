"""bench/speed_accuracy.py: one quick run writes the map's JSON, table and plot; bad arguments."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'bench' / 'speed_accuracy.py'


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_quick_run_writes_rows_with_times_and_real_frame_scores(tmp_path):
    proc = run('--output', str(tmp_path), '--quick', '--models',
               str(ROOT / 'models' / 'erfnet_synth.pt'), '--engines', 'none,cuda_graphs',
               '--sizes', '128x64,96x48', '--max-frames', '2', '--node', '--node-engines',
               'none', '--duration', '3', '--rate', '2')
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob('speed_accuracy-*-quick.json')
    report = json.loads(path.read_text())
    rows = report['rows']
    assert [(r['engine'], r['network_input']) for r in rows] == [
        ('none', '128x64'), ('cuda_graphs', '128x64'), ('none', '96x48'),
        ('cuda_graphs', '96x48')]
    for r in rows[::2]:
        assert r['forward']['median_ms'] > 0 and r['pipeline']['median_ms'] > 0
        assert r['node']['outputs_received']['labels'] >= 3  # the node, end to end
        camvid = r['scores']['camvid_test']  # a Cityscapes model, through the class map
        assert camvid['frames'] == 2 and 0.0 <= camvid['miou'] <= 1.0
    assert 'CUDA' in rows[1]['skipped'] or 'cuda' in rows[1]['skipped']
    assert report['environment']['load_average_1m_at_end'] >= 0
    table = path.with_suffix('.md').read_text()
    assert '| erfnet_synth | none | 96x48 |' in table and 'cuda_graphs' not in table
    assert path.with_suffix('.png').stat().st_size > 1000


def test_int8_rows_run_a_calibrated_copy(tmp_path):
    frames = ROOT / 'samples' / 'camvid' / 'test'
    proc = run('--output', str(tmp_path), '--quick', '--models',
               str(ROOT / 'models' / 'erfnet_synth.pt'), '--engines', 'onnxruntime,'
               'onnxruntime_int8', '--sizes', '128x64', '--max-frames', '2', '--calibrate',
               str(frames), '--calibration-frames', '2')
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob('speed_accuracy-*-quick.json')
    rows = json.loads(path.read_text())['rows']
    assert [r['engine'] for r in rows] == ['onnxruntime', 'onnxruntime_int8']
    assert all('skipped' not in r and r['model_run'].endswith('erfnet_synth_128x64.pt')
               for r in rows)
    assert 0.0 <= rows[1]['scores']['camvid_test']['miou'] <= 1.0


@pytest.mark.parametrize('args, message', [
    (['--engines', 'warp'], "unknown engines ['warp']"),
    (['--engines', 'none', '--models', 'nowhere.pt'], 'nowhere.pt: model file not found'),
])
def test_bad_arguments_are_named(tmp_path, args, message):
    proc = run('--output', str(tmp_path), *args)
    assert proc.returncode != 0 and message in proc.stderr
