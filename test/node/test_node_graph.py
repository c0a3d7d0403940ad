"""
segmentation_node on a real DDS graph: one camera, raw images, the default input QoS.

One node process (the console script, tiny custom8 model, CPU) serves the whole module; each test
talks to it through the module's probe node.
"""

import json

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from ros_probe import image_array, LATCHED, make_image, NODE_NAME, start_node
from std_msgs.msg import String

from seg_perception.engines import cpu_cores
from seg_perception.image_codec import overlay_encoding
from seg_perception.pipeline import Frame, Outputs
from seg_training.base.classes import ClassTable, CUSTOM8

W, H = 80, 48  # camera size; the tiny model's network input is 64x32
INPUT = '/image'
LABELS = '/segmentation/labels'
COLOR = '/segmentation/color'
OVERLAY = '/segmentation/overlay'
CONFIDENCE = '/segmentation/confidence'
CAMERA_STATUS = f'camera {INPUT}'


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'diagnostics_period:=0.3'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe)
    yield proc
    assert proc.stop() == 0, proc.log()


def segment(probe, node, msg, topics):
    """Send ``msg`` on the input until every topic in ``topics`` answers it."""
    return probe.request([(INPUT, msg)], {t: msg.header.stamp for t in topics}, node)


def counts(values, *names):
    return [int(values[n]) for n in names]


def test_only_subscribed_outputs_are_computed(probe, node):
    others = ('color', 'overlay', 'confidence')
    with probe.listening([LABELS]):
        probe.wait_status(
            CAMERA_STATUS, lambda v: int(v['subscribers_labels']) >= 1 and all(
                v[f'subscribers_{n}'] == '0' for n in others),
            'the node to see a labels subscriber and no other', node)
        before = probe.status('pipeline')
        for seed in range(2):
            msg, _ = make_image('rgb8', W, H, probe.stamp(), seed=seed)
            segment(probe, node, msg, [LABELS])
        done = int(before['frames_processed']) + 2
        after = probe.wait_status('pipeline', lambda v: int(v['frames_processed']) >= done,
                                  'diagnostics counting the two frames', node)
    assert int(after['computed_labels']) >= int(before['computed_labels']) + 2
    for name in others:
        assert after[f'computed_{name}'] == before[f'computed_{name}'], name


@pytest.mark.parametrize('encoding,pad', [('rgb8', 0), ('bgr8', 0), ('rgba8', 0), ('bgra8', 0),
                                          ('mono8', 0), ('rgb8', 7)])
def test_answers_each_encoding_with_input_header_at_camera_size(probe, node, reference,
                                                                encoding, pad):
    frame_id = f'cam_{encoding}_{pad}'
    msg, pixels = make_image(encoding, W, H, probe.stamp(), frame_id=frame_id, seed=pad + 3,
                             pad=pad)
    with probe.listening([LABELS, COLOR, OVERLAY]):
        got = segment(probe, node, msg, [LABELS, COLOR, OVERLAY])
    for topic, out in got.items():
        assert out.header.frame_id == frame_id, topic
        assert out.header.stamp == msg.header.stamp, topic
        assert (out.width, out.height) == (W, H), topic
    assert got[LABELS].encoding == 'mono8'
    assert got[COLOR].encoding == 'rgb8'
    assert got[OVERLAY].encoding == overlay_encoding(encoding)
    want = reference([Frame(pixels, encoding)], Outputs(), alpha=0.5)[0]
    np.testing.assert_array_equal(image_array(got[LABELS]), want.labels)
    np.testing.assert_array_equal(image_array(got[COLOR]), want.color)
    np.testing.assert_array_equal(image_array(got[OVERLAY]), want.overlay)


def _malformed(kind, stamp):
    msg, _ = make_image('rgb8', W, H, stamp, seed=11)
    row = W * 3
    if kind == 'unknown encoding':
        msg.encoding = 'yuv9'
        return msg, "unsupported encoding 'yuv9'"
    if kind == 'data shorter than step x height':
        msg.data = bytes(msg.data)[:-1]
        return msg, f'data has {row * H - 1} bytes, step x height = {row} x {H}'
    if kind == 'data longer than step x height':
        msg.data = bytes(msg.data) + bytes(5)
        return msg, f'data has {row * H + 5} bytes, step x height = {row} x {H}'
    if kind == 'step smaller than a row':
        msg.step = row - 3
        msg.data = bytes(msg.data)[:(row - 3) * H]
        return msg, f'step {row - 3} is smaller than one row'
    if kind == 'zero size':
        msg.height, msg.width, msg.step, msg.data = 0, 0, 0, b''
        return msg, 'zero-size image: height=0 width=0'
    if kind == 'zero width':
        msg.width, msg.step, msg.data = 0, 0, b''
        return msg, f'zero-size image: height={H} width=0'
    raise ValueError(kind)


@pytest.mark.parametrize('kind', ['unknown encoding', 'data shorter than step x height',
                                  'data longer than step x height', 'step smaller than a row',
                                  'zero size', 'zero width'])
def test_malformed_frame_is_dropped_with_a_warning_and_the_next_one_answered(probe, node, kind):
    bad, problem = _malformed(kind, probe.stamp())
    with probe.listening([LABELS]):
        probe.send_until_dropped(INPUT, bad, CAMERA_STATUS,
                                 f'the node to count the {kind} frame as malformed', node)
        good, _ = make_image('bgr8', W, H, probe.stamp(), seed=12)
        answer = segment(probe, node, good, [LABELS])[LABELS]
    assert (answer.width, answer.height) == (W, H)
    warning = f'{INPUT}: dropped malformed sensor_msgs/Image: {problem}'
    probe.spin_until(lambda: warning in node.log(), f'the warning {warning!r}', process=node)
    line = next(ln for ln in node.log().splitlines() if warning in ln)
    assert line.startswith('[WARN]'), line


def test_overlay_alpha_changes_at_run_time_and_bad_values_are_rejected(probe, node, reference):
    client = AsyncParameterClient(probe.node, NODE_NAME)
    assert client.wait_for_services(timeout_sec=30.0), 'no parameter services'

    def call(future, what):
        probe.spin_until(future.done, what, process=node)
        return future.result()

    def set_param(name, value):
        future = client.set_parameters([Parameter(name, value=value)])
        return call(future, f'set {name}').results[0]

    def overlay_of(seed):
        msg, pixels = make_image('rgb8', W, H, probe.stamp(), seed=seed)
        got = segment(probe, node, msg, [COLOR, OVERLAY])
        return pixels, image_array(got[COLOR]), image_array(got[OVERLAY])

    with probe.listening([COLOR, OVERLAY]):
        try:
            assert set_param('overlay_alpha', 1.0).successful
            _, color, overlay = overlay_of(20)
            np.testing.assert_array_equal(overlay, color)  # colours only
            assert set_param('overlay_alpha', 0.0).successful
            pixels, _, overlay = overlay_of(21)
            np.testing.assert_array_equal(overlay, pixels)  # the camera image only
            for bad in (1.5, -0.1, float('nan')):
                result = set_param('overlay_alpha', bad)
                assert not result.successful, bad
                assert result.reason
            values = call(client.get_parameters(['overlay_alpha']), 'get overlay_alpha').values
            assert values[0].double_value == 0.0
            assert not set_param('device', 'cpu').successful  # read-only at run time
            pixels, _, overlay = overlay_of(22)
            np.testing.assert_array_equal(overlay, pixels)
        finally:
            assert set_param('overlay_alpha', 0.5).successful


def test_diagnostics_report_rate_latency_and_drops(probe, node):
    with probe.listening([LABELS]):
        for seed in range(3):
            msg, _ = make_image('rgb8', W, H, probe.stamp(), seed=30 + seed)
            segment(probe, node, msg, [LABELS])
    pipeline = probe.wait_status('pipeline', lambda v: v['latency_p50_ms'] != 'n/a',
                                 'latency in /diagnostics', node)
    camera = probe.status(CAMERA_STATUS)
    for values in (pipeline, camera):
        assert float(values['fps']) > 0
        p50, p99 = float(values['latency_p50_ms']), float(values['latency_p99_ms'])
        assert 0 <= p50 <= p99 < 60_000
        assert int(values['frames_processed']) >= 3
        assert int(values['frames_received']) >= int(values['frames_processed'])
        assert int(values['dropped_overwritten']) >= 0
        assert int(values['dropped_malformed']) >= 0
    assert pipeline['device'] == 'cpu'
    assert pipeline['input_size'] == '64x32'
    assert pipeline['engine'] == 'onnxruntime (CPU provider, %d threads, fp32)' % cpu_cores()
    assert camera['topic'] == INPUT


def test_confidence_is_max_softmax_probability_as_mono8(probe, node, reference):
    msg, pixels = make_image('rgb8', W, H, probe.stamp(), seed=40)
    with probe.listening([LABELS, CONFIDENCE]):
        got = segment(probe, node, msg, [LABELS, CONFIDENCE])
    conf = got[CONFIDENCE]
    assert conf.encoding == 'mono8' and (conf.width, conf.height) == (W, H)
    values = image_array(conf).astype(int)
    assert values.min() >= 255 // len(CUSTOM8)  # the largest of 8 probabilities is >= 1/8
    want = reference([Frame(pixels, 'rgb8')], Outputs(confidence=True))[0]
    assert np.abs(values - np.rint(want.confidence * 255)).max() <= 1
    np.testing.assert_array_equal(image_array(got[LABELS]), want.labels)


def test_late_subscriber_gets_the_class_table(probe, node, tiny_model_file):
    topic = '/segmentation/class_table'
    with probe.listening([topic], String, LATCHED):
        probe.spin_until(lambda: probe.messages[topic], 'the class table', process=node)
        tables = list(probe.messages[topic])
    assert len(tables) == 1  # published once
    table = json.loads(tables[0].data)
    assert ClassTable.from_dict(table) == CUSTOM8
    assert table['ids'] == list(range(len(CUSTOM8)))
    assert table['model'] == str(tiny_model_file)
