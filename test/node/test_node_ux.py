"""
segmentation_node as a user meets it.

--help, integer parameters, the statistics line, stamps from another clock, a flood of malformed
frames, vision_msgs/LabelInfo.

One node process (raw input, reliable with depth 100 so a burst arrives whole, tiny custom8
model) serves the module; it is started with integers for its floating-point parameters, as
`-p log_period:=1` gives them.
"""

from pathlib import Path
import re
import subprocess
import sys
import time

from builtin_interfaces.msg import Time
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from ros_probe import image_array, LATCHED, make_image, NODE_NAME, start_node

from seg_perception import params
from seg_training.base.classes import CUSTOM8

W, H = 48, 32
INPUT = '/image'
LABELS = '/segmentation/labels'
COLOR = '/segmentation/color'
OVERLAY = '/segmentation/overlay'
CAMERA_STATUS = f'camera {INPUT}'


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'reliability:=reliable',
                       'depth:=100', 'log_period:=1', 'diagnostics_period:=1', 'overlay_alpha:=1'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe)
    yield proc
    assert proc.stop() == 0, proc.log()


def _node_command():
    exe = Path(sys.executable).with_name('segmentation_node')
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'seg_perception.node']


@pytest.mark.parametrize('args', [['--help'], ['-h'],
                                  ['--help', '--ros-args', '-p', 'device:=cpu']])
def test_help_prints_the_parameters_and_exits_without_starting_ros(args):
    done = subprocess.run(_node_command() + args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('usage: segmentation_node')
    assert done.stdout.strip() == params.usage(NODE_NAME)
    for name, value in params.defaults().items():
        assert f'  {name} (' in done.stdout and f'default {value!r}' in done.stdout, name
    assert '[INFO]' not in done.stdout + done.stderr  # no node was made


def test_integer_values_for_floating_point_parameters(probe, node):
    client = AsyncParameterClient(probe.node, NODE_NAME)
    assert client.wait_for_services(timeout_sec=30.0), 'no parameter services'

    def call(future, what):
        probe.spin_until(future.done, what, process=node)
        return future.result()

    def get(name):
        return call(client.get_parameters([name]), f'get {name}').values[0]

    def set_param(value):
        return call(client.set_parameters([Parameter('overlay_alpha', value=value)]),
                    f'set overlay_alpha {value!r}').results[0]

    def overlay(seed):
        msg, pixels = make_image('rgb8', W, H, probe.stamp(), seed=seed)
        got = probe.request([(INPUT, msg)], {t: msg.header.stamp for t in (COLOR, OVERLAY)},
                            node)
        return pixels, image_array(got[COLOR]), image_array(got[OVERLAY])

    assert get('overlay_alpha').double_value == 1.0  # started with `overlay_alpha:=1`
    assert (get('log_period').integer_value, get('diagnostics_period').integer_value) == (1, 1)
    with probe.listening([COLOR, OVERLAY]):
        _, color, image = overlay(1)
        np.testing.assert_array_equal(image, color)  # alpha 1: the colours only
        assert set_param(0).successful  # an integer, as `ros2 param set ... overlay_alpha 0`
        assert get('overlay_alpha').double_value == 0.0
        pixels, _, image = overlay(2)
        np.testing.assert_array_equal(image, pixels)  # alpha 0: the camera image only
        result = set_param(2)
        assert not result.successful and 'overlay_alpha' in result.reason
        assert set_param(1).successful
        _, color, image = overlay(3)
        np.testing.assert_array_equal(image, color)


def test_statistics_line_counts_received_processed_skipped_and_dropped(probe, node):
    """No output has a subscriber: frames are received and skipped, and the line says so."""
    before = int(probe.wait_status(CAMERA_STATUS, lambda v: True, 'diagnostics',
                                   node)['skipped_no_subscribers'])
    pub = probe.publisher(type(make_image('rgb8', W, H, probe.stamp())[0]), INPUT)
    last = [0.0]

    def skipped_three():
        if time.monotonic() - last[0] > 0.5:
            pub.publish(make_image('rgb8', W, H, probe.stamp(), seed=7)[0])
            last[0] = time.monotonic()
        values = probe.status(CAMERA_STATUS)
        return values is not None and int(values['skipped_no_subscribers']) >= before + 3

    probe.spin_until(skipped_three, 'three frames skipped for lack of subscribers', process=node)
    pattern = re.compile(rf'\[{NODE_NAME}\]: {INPUT}: .* fps, latency p50 .* received (\d+), '
                         r'processed (\d+), skipped (\d+) \(no subscribers\), dropped (\d+) '
                         r'overwritten / (\d+) malformed / (\d+) failed$')

    def logged():
        found = [pattern.search(ln) for ln in node.log().splitlines()]
        return [m for m in found if m and int(m.group(3)) >= before + 3]

    probe.spin_until(logged, f'a statistics line with at least {before + 3} skipped',
                     process=node)
    received, processed, skipped, overwritten, malformed, failed = map(int, logged()[-1].groups())
    assert received >= processed + skipped + overwritten + malformed + failed  # + in flight
    assert received >= skipped >= before + 3


def test_stamps_from_another_clock_warn_once_naming_use_sim_time(probe, node):
    now = probe.node.get_clock().now().nanoseconds
    with probe.listening([LABELS]):
        for i, offset_s in enumerate((1000, 2000, -5000)):
            sec = now // 10**9 - offset_s
            msg, _ = make_image('rgb8', W, H, Time(sec=sec, nanosec=i + 1), seed=20 + i)
            probe.request([(INPUT, msg)], {LABELS: msg.header.stamp}, node)
    probe.spin_until(lambda: 'use_sim_time' in node.log(), 'the stamp warning', process=node)
    time.sleep(1.0)  # a second warning would be logged by now
    warnings = [ln for ln in node.log().splitlines() if 'use_sim_time' in ln]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith('[WARN]')
    # 1000 s, plus the time the frame took
    assert re.search(rf'{INPUT}: header stamps are 10\d\d\.\d s behind', warnings[0])
    assert 'use_sim_time is false' in warnings[0]
    values = probe.status('pipeline')
    assert values['latency_p99_ms'] == 'n/a' or float(values['latency_p99_ms']) < 10_000


def test_malformed_flood_logs_once_per_kind_with_values_cut(probe, node):
    start = len(node.log().splitlines())
    before = int(probe.wait_status(CAMERA_STATUS, lambda v: True, 'diagnostics',
                                   node)['dropped_malformed'])
    pub = probe.publisher(type(make_image('rgb8', W, H, probe.stamp())[0]), INPUT)
    t0 = time.monotonic()
    for i in range(30):
        short, _ = make_image('rgb8', W + i, H, probe.stamp(), seed=i)
        short.data = bytes(short.data)[:-1 - i]  # a different size every time
        pub.publish(short)
        odd, _ = make_image('rgb8', W, H, probe.stamp(), seed=i)
        odd.encoding = f'{i:03d}' + 'y' * 100_000
        pub.publish(odd)
        probe.executor.spin_once(timeout_sec=0.0)
    probe.wait_status(CAMERA_STATUS, lambda v: int(v['dropped_malformed']) >= before + 20,
                      'the node to count the flood', node)
    seconds = time.monotonic() - t0
    lines = [ln for ln in node.log().splitlines()[start:] if 'dropped malformed' in ln]
    periods = 1 + int(seconds // 5.0)  # one warning per kind and 5 s period
    sizes = [ln for ln in lines if 'data has' in ln]
    encodings = [ln for ln in lines if 'unsupported encoding' in ln]
    assert 1 <= len(sizes) <= periods + 1, sizes
    assert 1 <= len(encodings) <= periods + 1, [ln[:200] for ln in encodings]
    assert max(len(ln) for ln in lines) < 600
    assert re.search(r"unsupported encoding '\d{3}y{30,}\.\.\. \(100003 characters\)",
                     encodings[0]), encodings[0]


def test_label_info_is_published_where_vision_msgs_exists(probe, node):
    pytest.importorskip('vision_msgs.msg', reason='no vision_msgs here (it has no wheel on the '
                        'package index): the node publishes the JSON class table only')
    from vision_msgs.msg import LabelInfo

    topic = '/segmentation/label_info'
    with probe.listening([topic], LabelInfo, LATCHED):
        probe.spin_until(lambda: probe.messages[topic], 'LabelInfo', process=node)
        info = probe.messages[topic][0]
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(
        enumerate(CUSTOM8.names))
