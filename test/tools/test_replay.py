"""seg-replay on a real DDS graph: a bag and a folder of frames into a probe subscriber."""

import ast
from pathlib import Path
import signal
import subprocess
import sys
import time

from big_images import zero_png
import cv2
from diagnostic_msgs.msg import DiagnosticArray
from file_module import load_file
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
import yaml

from seg_perception import replay
from seg_perception.ros_types import BagError

TS = get_typestore(Stores.ROS2_KILTED)
SEG_REPLAY = str(Path(sys.executable).with_name('seg-replay'))
T0 = 1_650_000_000_000_000_000  # ns, recorded time of the first frame
STEP = 100_000_000  # 10 frames/s per camera
DEADLINE = 60.0  # s; the CPU is shared and slow


def _header(stamp: int, frame_id: str):
    time_msg = TS.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9, nanosec=stamp % 10**9)
    return TS.types['std_msgs/msg/Header'](stamp=time_msg, frame_id=frame_id)


@pytest.fixture(scope='module')
def drive(tmp_path_factory):
    """Write an mcap bag: /front/image_raw (rgb8 Image), /rear/image_raw/compressed (png)."""
    path = tmp_path_factory.mktemp('replay') / 'drive'
    rng = np.random.default_rng(3)
    sent = {'/front/image_raw': [], '/rear/image_raw/compressed': []}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        front = writer.add_connection('/front/image_raw', 'sensor_msgs/msg/Image', typestore=TS)
        rear = writer.add_connection('/rear/image_raw/compressed',
                                     'sensor_msgs/msg/CompressedImage', typestore=TS)
        for i in range(4):
            stamp = T0 + i * STEP
            pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            msg = TS.types['sensor_msgs/msg/Image'](
                header=_header(stamp, 'front_cam'), height=12, width=16, encoding='rgb8',
                is_bigendian=0, step=48, data=pixels.reshape(-1))
            writer.write(front, stamp + 2_000_000, bytes(TS.serialize_cdr(msg, msg.__msgtype__)))
            sent['/front/image_raw'].append((stamp, pixels.tobytes()))
            ok, png = cv2.imencode('.png', pixels)
            msg = TS.types['sensor_msgs/msg/CompressedImage'](
                header=_header(stamp + 50_000_000, 'rear_cam'), format='bgr8; png compressed bgr8',
                data=png.reshape(-1))
            writer.write(rear, stamp + 52_000_000, bytes(TS.serialize_cdr(msg, msg.__msgtype__)))
            sent['/rear/image_raw/compressed'].append((stamp + 50_000_000, png.tobytes()))
    return path, sent


class Probe:
    """A probe node in a context of its own, recording what arrives with arrival times."""

    def __init__(self, image_topics, compressed_topics=(), reliability='reliable'):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node('replay_probe', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = {t: [] for t in list(image_topics) + list(compressed_topics)}
        self.clock = []
        policy = (ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                  else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(depth=50, reliability=policy)
        for topic in image_topics:
            self.node.create_subscription(Image, topic, self._keep(topic), qos)
        for topic in compressed_topics:
            self.node.create_subscription(CompressedImage, topic, self._keep(topic), qos)
        # Reliable, to check every tick; rclpy's TimeSource (best effort) matches it too.
        self.node.create_subscription(
            Clock, '/clock', lambda m: self.clock.append(m.clock.sec * 10**9 + m.clock.nanosec),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _keep(self, topic):
        return lambda msg: self.received[topic].append((time.monotonic(), msg))

    def spin_until(self, done, timeout=DEADLINE, proc=None):
        """Spin until ``done()``, the deadline, or the end of ``proc`` (plus a last spin)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            if proc is not None and proc.poll() is not None:
                self.executor.spin_once(timeout_sec=0.5)
                break
            self.executor.spin_once(timeout_sec=0.1)
        return done()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _start(*args):
    return subprocess.Popen([SEG_REPLAY, *map(str, args), '--no-progress',
                             '--wait-for-subscribers', str(DEADLINE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=DEADLINE):
    out = err = None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def _stop(proc, timeout=20):
    """Interrupt a process that runs until stopped (the node) and return what it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    return _finish(proc, timeout)


def test_bag_topics_arrive_as_recorded_with_clock(drive):
    path, sent = drive
    probe = Probe(['/front/image'], ['/rear/image_raw/compressed'])
    proc = None
    try:
        proc = _start(path, '--topic-map', '/front/image_raw:=/front/image', '--rate', '1')
        done = probe.spin_until(lambda: all(len(v) == 4 for v in probe.received.values()),
                                proc=proc)
        assert done, ({t: len(v) for t, v in probe.received.items()}, _finish(proc))
        rc, out, err = _finish(proc)
        assert rc == 0, err
        assert 'published 8 messages on 2 topics' in out
        front = probe.received['/front/image']
        assert [(_stamp(m), bytes(m.data)) for _, m in front] == sent['/front/image_raw']
        assert all(m.header.frame_id == 'front_cam' and m.encoding == 'rgb8' for _, m in front)
        rear = probe.received['/rear/image_raw/compressed']
        assert [(_stamp(m), bytes(m.data)) for _, m in rear] == sent['/rear/image_raw/compressed']
        # Paced at recorded speed: 4 frames 100 ms apart take at least ~300 ms to arrive.
        assert front[-1][0] - front[0][0] > 0.25
        # /clock carries the recorded (bag) time, never runs backwards, covers the drive.
        probe.spin_until(lambda: probe.clock and probe.clock[-1] >= T0 + 352_000_000, 5.0)
        assert probe.clock and probe.clock == sorted(probe.clock)
        assert T0 <= probe.clock[0] and probe.clock[-1] == T0 + 3 * STEP + 52_000_000
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()


def test_folder_of_frames_as_a_camera(tmp_path):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8) for _ in range(3)]
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f'frame_{i:03d}.png'), frame)
    (tmp_path / 'notes.txt').write_text('not a frame')
    probe = Probe(['/cam/image_raw'], ['/cam/image_raw/compressed'])
    proc = None
    try:
        for fmt in ('raw', 'png'):
            proc = _start(tmp_path, '--topic', '/cam/image_raw', '--fps', '20', '--frame-id',
                          'cam_optical', '--format', fmt)
            topic = '/cam/image_raw' if fmt == 'raw' else '/cam/image_raw/compressed'
            done = probe.spin_until(lambda: len(probe.received[topic]) == 3, proc=proc)
            assert done, (len(probe.received[topic]), _finish(proc))
            rc, _, err = _finish(proc)
            assert rc == 0, err
            msgs = [m for _, m in probe.received[topic]]
            assert all(m.header.frame_id == 'cam_optical' for m in msgs)
            stamps = [_stamp(m) for m in msgs]
            assert np.diff(stamps).tolist() == [50_000_000, 50_000_000]  # 20 frames/s
            assert abs(stamps[0] - time.time_ns()) < 120e9  # wall-clock based stamps
            for frame, msg in zip(frames, msgs):
                if fmt == 'raw':
                    assert msg.encoding == 'bgr8' and (msg.height, msg.width) == (10, 14)
                    assert bytes(msg.data) == frame.tobytes()
                else:  # the png file goes out as it is
                    assert msg.format == 'png'
                    decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8),
                                           cv2.IMREAD_UNCHANGED)
                    np.testing.assert_array_equal(decoded, frame)
        probe.spin_until(lambda: probe.clock and probe.clock[-1] >= stamps[-1], 10.0)
        assert probe.clock[-1] == stamps[-1]  # /clock follows the synthetic stamps
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()


@pytest.mark.parametrize('fmt', ['raw', 'png'])
def test_folder_frame_over_max_input_pixels_is_refused_undecoded(tmp_path, fmt):
    cv2.imwrite(str(tmp_path / 'frame_000.png'), np.zeros((10, 14, 3), np.uint8))
    (tmp_path / 'frame_001.png').write_bytes(zero_png(30000, 30000))
    source = replay.FrameSource(tmp_path, '/cam/image_raw', 10.0, 'cam', fmt=fmt)
    messages = source.messages()
    assert next(messages).topic.startswith('/cam/image_raw')
    with pytest.raises(ValueError, match='frame_001.png: png of 30000x30000 = 900000000 pixels '
                       'is over max_input_pixels 16777216'):
        next(messages)
    small = replay.FrameSource(tmp_path, '/cam/image_raw', 10.0, 'cam', fmt=fmt,
                               max_pixels=100)
    with pytest.raises(ValueError, match='frame_000.png: png of 14x10 = 140 pixels'):
        next(small.messages())


@pytest.mark.parametrize('stop', [signal.SIGINT, signal.SIGTERM], ids=['ctrl_c', 'sigterm'])
def test_loop_runs_until_stopped(drive, stop):
    path, _ = drive
    probe = Probe(['/front/image_raw'], reliability='best_effort')  # as the node subscribes
    proc = None
    try:
        proc = _start(path, '--topic', '/front/image_raw', '--loop', '--rate', '4', '--qos',
                      'best_effort')
        done = probe.spin_until(lambda: len(probe.received['/front/image_raw']) >= 6, proc=proc)
        assert done, _finish(proc)
        assert proc.poll() is None  # still looping past the bag's 4 frames
        proc.send_signal(stop)
        rc, out, err = _finish(proc)
        assert rc == 0, err
        assert 'published' in out and 'Traceback' not in err
        stamps = [_stamp(m) for _, m in probe.received['/front/image_raw']]
        assert stamps[4] == stamps[0]  # the second round replays the recorded stamps
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        probe.close()


def test_missing_topic_is_an_error(drive, capsys):
    path, _ = drive
    assert replay.main([str(path), '--topic', '/left/image_raw']) == 1
    err = capsys.readouterr().err
    assert '/left/image_raw is not in the bag' in err and '/front/image_raw (Image)' in err


def test_video_source_with_start_offset(tmp_path):
    path = tmp_path / 'drive.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    source = replay.FrameSource(path, '/cam/image_raw', None, 'cam', start_offset=0.2)
    assert source.fps == 10 and source.count == 3
    msgs = list(source.messages())
    assert len(msgs) == 3 and {m.topic for m in msgs} == {'/cam/image_raw'}
    assert np.diff([m.time for m in msgs]).tolist() == [100_000_000] * 2
    first = TS.deserialize_cdr(msgs[0].data, 'sensor_msgs/msg/Image')
    assert first.encoding == 'bgr8' and abs(int(np.asarray(first.data).mean()) - 80) <= 3
    again = list(source.messages())  # a second loop keeps counting time forward
    assert again[0].time == msgs[-1].time + 100_000_000


def test_bag_source_start_offset_and_bad_inputs(drive, tmp_path):
    path, _ = drive
    source = replay.BagSource(path, ['/front/image_raw'], start_offset=0.15)
    times = [m.time for m in source.messages()]
    assert times == [T0 + 2 * STEP + 2_000_000, T0 + 3 * STEP + 2_000_000]
    with pytest.raises(ValueError, match='not OLD:=NEW'):
        replay.parse_topic_map(['/a=/b'])
    assert replay.parse_topic_map(['/a:=/b']) == {'/a': '/b'}
    with pytest.raises(ValueError, match='no image files'):
        replay.FrameSource(tmp_path, '/cam', 10.0, 'cam')
    (tmp_path / 'clip.mp4').write_bytes(b'not a video')
    with pytest.raises(ValueError, match='not a bag, image folder or video'):
        replay.FrameSource(tmp_path / 'clip.mp4', '/cam', None, 'cam')
    with Writer(tmp_path / 'imu', version=9) as writer:
        writer.add_connection('/imu', 'std_msgs/msg/String', typestore=TS)
    with pytest.raises(BagError, match='no Image or CompressedImage topics'):
        replay.BagSource(tmp_path / 'imu')


ROOT = Path(__file__).resolve().parents[2]


def _load_launch_file(name):
    """Import a launch file as a module (its launch imports are inside functions)."""
    return load_file(ROOT / 'launch' / name)


def test_rviz_config_shows_input_overlay_and_colour():
    config = yaml.safe_load((ROOT / 'config' / 'segment.rviz').read_text())
    manager = config['Visualization Manager']
    images = {d['Topic']['Value']: d for d in manager['Displays']
              if d['Class'] == 'rviz_default_plugins/Image'}
    assert set(images) == {'/camera/image_raw', '/camera/segmentation/overlay',
                           '/camera/segmentation/color'}
    assert all(d['Enabled'] for d in images.values())
    assert manager['Global Options']['Fixed Frame'] == 'camera'


def test_replay_launch_plays_with_clock_and_sim_time():
    assert callable(_load_launch_file('replay.launch.py').generate_launch_description)
    # replay.launch.py includes segment.launch.py (node, RViz); both use launch_support's helpers
    from seg_perception import launch_support as launch
    strings = set()
    for path in (ROOT / 'launch' / 'replay.launch.py', ROOT / 'launch' / 'segment.launch.py',
                 ROOT / 'seg_perception' / 'launch_support.py'):
        strings |= {n.value for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.Constant)}
    assert {'ros2', 'bag', 'play', '--clock', '--rate', 'use_sim_time', 'rviz2', '-d'} <= strings
    # The RViz copy follows the played camera and its frame.
    text = launch.rviz_config((ROOT / 'config' / 'segment.rviz').read_text(),
                              '/front/image_raw', 'front_cam')
    manager = yaml.safe_load(text)['Visualization Manager']
    assert {d['Topic']['Value'] for d in manager['Displays']} == {
        '/front/image_raw', '/front/segmentation/overlay', '/front/segmentation/color'}
    assert manager['Global Options']['Fixed Frame'] == 'front_cam'
    assert launch.camera_topics('/front/image_raw', [], 'image_raw') == ['/front/image_raw']
    assert launch.camera_topics('', ['front', 'rear'], 'image') == ['/front/image',
                                                                    '/rear/image']
    assert launch.camera_namespace('/car/front/image_raw') == '/car/front'
    assert launch.camera_namespace('image') == ''
    # Node parameters come from the params file whatever the node's namespace.
    text = (ROOT / 'config' / 'segment.yaml').read_text()
    params = launch.node_parameters(text)
    assert params and params == yaml.safe_load(text)['segmentation_node']['ros__parameters']
    assert launch.node_parameters("/**:\n  ros__parameters:\n    depth: 3\n") == {'depth': 3}


def test_replay_drives_the_node_on_sim_time(drive, tiny_model_file):
    """Bag -> seg-replay -> segmentation_node (use_sim_time, compressed input) -> probe."""
    path, sent = drive
    node = subprocess.Popen(
        [str(Path(sys.executable).with_name('segmentation_node')), '--ros-args',
         '-p', f'model:={tiny_model_file}', '-p', 'device:=cpu', '-p', 'use_sim_time:=true',
         '-p', 'input_transport:=compressed', '-p', 'diagnostics_period:=0.5'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = Probe(['/segmentation/labels'])
    latency = []

    def on_diagnostics(msg):
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            # 'n/a' while no frame of the rolling window has a latency (none yet, or the
            # window has passed the last frame)
            if 'camera' in status.name and values.get('latency_p50_ms', 'n/a') != 'n/a':
                latency.append(float(values['latency_p50_ms']))

    probe.node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    proc = None
    try:
        assert probe.spin_until(lambda: probe.node.count_subscribers('/image/compressed') > 0,
                                proc=node), _stop(node)
        # --delay: the node's best-effort subscription drops what arrives before it has matched
        # the replay's publisher, which can come after the publisher has matched it.
        proc = _start(path, '--topic', '/rear/image_raw/compressed', '--topic-map',
                      '/rear/image_raw/compressed:=/image/compressed', '--rate', '0.5',
                      '--delay', '2')
        labels = probe.received['/segmentation/labels']
        done = probe.spin_until(lambda: proc.poll() is not None and len(labels) == 4 and latency,
                                proc=node)
        assert done, (len(labels), latency, _finish(proc, 5), _stop(node))
        assert _finish(proc)[0] == 0
        recorded = [stamp for stamp, _ in sent['/rear/image_raw/compressed']]
        assert [_stamp(m) for _, m in labels] == recorded
        assert all((m.height, m.width, m.encoding) == (12, 16, 'mono8') for _, m in labels)
        # Latency is measured on the node's clock: the bag's /clock time, not today's date
        # (which would put it years after the 2022 stamps).
        assert 0 <= latency[-1] < 60_000
    finally:
        for p in (proc, node):
            if p is not None and p.poll() is None:
                _stop(p)
        probe.close()
