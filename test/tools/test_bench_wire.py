"""
bench/bench_wire.py: the floor relay moves the node's bytes, and a quick run writes the report.

The quick run starts real processes (camera, segmentation_node, the bare relay) on small frames
with the tiny model; what is checked is the report's content, not the times.
"""

import json
from pathlib import Path

from file_module import load_file
import numpy as np
import pytest

from seg_perception.pipeline import Frame

SCRIPT = Path(__file__).resolve().parents[2] / 'bench' / 'bench_wire.py'


@pytest.fixture(scope='module')
def wire():
    return load_file(SCRIPT)


@pytest.mark.parametrize('scale', [1.0, 0.5, 0.3])
def test_relay_outputs_have_the_node_outputs_sizes_and_encodings(wire, reference, scale):
    frame = Frame(np.zeros((123, 201, 3), np.uint8), 'rgb8')
    (result,) = reference([frame], output_scale=scale)
    relayed = {name: (array, encoding) for name, array, encoding in
               wire.relay_outputs(201, 123, scale)}
    assert set(relayed) == {'labels', 'color', 'overlay'}
    for name, encoding in (('labels', 'mono8'), ('color', 'rgb8'),
                           ('overlay', result.overlay_encoding)):
        array = getattr(result, name)
        assert relayed[name][0].shape == array.shape, name
        assert relayed[name][0].nbytes == array.nbytes, name
        assert relayed[name][1] == encoding, name


def test_output_latencies_pair_the_outputs_of_each_frame(wire):
    bench = wire.bench
    ms = 1_000_000
    received = {'labels': [(10 * ms + 5 * ms, 10 * ms), (20 * ms + 4 * ms, 20 * ms),
                           (30 * ms + 3 * ms, 30 * ms)],
                'color': [(10 * ms + 7 * ms, 10 * ms), (20 * ms + 9 * ms, 20 * ms)],
                'overlay': [(10 * ms + 8 * ms, 10 * ms), (20 * ms + 6 * ms, 20 * ms),
                            (30 * ms + 4 * ms, 30 * ms)]}
    got = bench.output_latencies(received, warmup_frames=1)
    assert got['labels'] == pytest.approx([0.004, 0.003])
    # frame 10 is warm-up, frame 30 lacks its colour: only frame 20 has all three
    assert got['all_outputs'] == pytest.approx([0.009])


def test_quick_run_reports_node_pipeline_floor_and_the_node_share(wire, tiny_model_file,
                                                                  tmp_path, capsys):
    assert wire.main(['--quick', '--size', '160x120', '--model', str(tiny_model_file),
                      '--duration', '3', '--rate', '5', '--output', str(tmp_path)]) == 0
    (path,) = tmp_path.glob('wire-*-quick.json')
    report = json.loads(path.read_text())
    env = report['environment']
    for key in ('device', 'python', 'torch', 'load_average', 'load_average_1m_at_start'):
        assert key in env, key
    assert env['ros']['rclpy'] and env['ros']['FASTDDS_DEFAULT_PROFILES_FILE'].endswith(
        'fastdds_large_images.xml')
    assert report['frame'] == '160x120 rgb8'
    for part in ('node', 'floor'):
        for key in ('latency_stamp_to_labels', 'latency_stamp_to_all_outputs'):
            stats = report[part][key]
            assert stats['n'] >= 2, (part, key)
            assert 0 < stats['median_ms'] <= stats['p90_ms'] <= stats['p99_ms'], (part, key)
    assert report['floor']['outputs_received']['overlay'] >= 2
    assert report['pipeline']['median_ms'] > 0 and 'forward' in report['pipeline']['stages']
    for key in ('to_labels', 'to_all_outputs'):
        share = report['shares'][key]
        node = report['node'][f'latency_stamp_{key}']['median_ms']
        floor = report['floor'][f'latency_stamp_{key}']['median_ms']
        assert share['node_end_to_end_ms'] == node and share['floor_ms'] == floor
        assert share['node_share_ms'] == pytest.approx(
            node - report['pipeline']['median_ms'] - floor, abs=0.02)
        stages = report['node']['stages']
        in_node = sum(stages[s]['p50_ms'] for s in ('upload', 'resize', 'forward', 'labels',
                                                    'color', 'overlay') if s in stages)
        assert share['pipeline_in_node_ms'] == pytest.approx(in_node, abs=0.02)
        assert share['node_share_same_frames_ms'] == pytest.approx(node - in_node - floor,
                                                                   abs=0.02)
    printed = capsys.readouterr().out
    assert 'node share' in printed and str(path) in printed
