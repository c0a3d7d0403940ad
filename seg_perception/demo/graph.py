"""The demo's DDS graph: segmentation_node, a recorder of its outputs, and the replay."""

from collections import defaultdict
from dataclasses import dataclass
import logging
import os
from pathlib import Path
import signal
import struct
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Writer
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import String
from tqdm import tqdm

from seg_perception import ros_types
from seg_perception.bag import LATCHED_QOS
from seg_perception.demo.drive import DemoError, drive_topic, DriveSpec, OUTPUTS

_logger = logging.getLogger(__name__)

NODE_NAME = 'segmentation_node'
# Replay starts once the node subscribes; meanwhile this recorder's /clock subscription matches.
REPLAY_DELAY_S = 2.0
# After the node has answered every frame, outputs still missing this long after the last
# arrival are lost (a reliable repair takes at most a heartbeat period, 3 s in Fast DDS).
SETTLE_S = 4.0
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
CHILD_ENV = {'PYTHONUNBUFFERED': '1', 'RCUTILS_LOGGING_BUFFERED_STREAM': '0',
             'RCUTILS_COLORIZED_OUTPUT': '0'}


def cdr_header(data: bytes) -> Tuple[int, str]:
    """
    Return (stamp ns, frame_id) of a CDR message that starts with a std_msgs/Header.

    Reads only the header, so the recorder needs no full deserialisation of large images.
    """
    if len(data) < 16 or data[0] != 0 or data[1] not in (0, 1):
        raise ValueError(f'not a CDR message ({len(data)} bytes, encapsulation {data[:2]!r})')
    order = '<' if data[1] == 1 else '>'
    sec, nanosec, length = struct.unpack_from(order + 'iII', data, 4)
    if 16 + length > len(data) or length == 0:
        raise ValueError(f'CDR header frame_id of {length} bytes in a {len(data)}-byte message')
    return sec * 1_000_000_000 + nanosec, data[16:16 + length - 1].decode()


class Recorder(Node):
    """
    Records the node's outputs into a bag and keeps what the report needs.

    Outputs arrive as raw CDR bytes and go into the bag unchanged (bag time = header stamp).
    """

    def __init__(self, writer: Writer, cameras: Sequence[str], table_time: int,
                 context: Optional[Context] = None) -> None:
        super().__init__('seg_demo_recorder', context=context)
        self._table_time = table_time  # bag time of the class table: the drive's start
        ts = ros_types.typestore()
        # (camera, output) -> stamp -> (node publish, receipt here) wall times in ns
        self.arrivals: Dict[Tuple[str, str], Dict[int, Tuple[int, int]]] = defaultdict(dict)
        self.frame_ids: Dict[Tuple[str, str], set] = defaultdict(set)
        self.clock_points: List[Tuple[int, int]] = []  # (/clock time, its publish wall time) ns
        self.status: Dict[str, Dict[str, str]] = {}
        self.class_table: Optional[str] = None
        self.last_arrival = time.monotonic()
        self._writer = writer
        for cam in cameras:
            for name in OUTPUTS:
                topic = f'/{cam}/segmentation/{name}'
                conn = writer.add_connection(topic, ros_types.IMAGE, typestore=ts)
                self.create_subscription(
                    Image, topic, lambda data, info, c=cam, n=name, k=conn:
                    self._on_output(c, n, k, data, info), RELIABLE, raw=True)
            topic = f'/{cam}/segmentation/class_table'
            conn = writer.add_connection(topic, ros_types.STRING, typestore=ts,
                                         offered_qos_profiles=[LATCHED_QOS])
            self.create_subscription(String, topic, lambda data, k=conn: self._on_table(k, data),
                                     LATCHED, raw=True)
        self.create_subscription(Clock, '/clock', self._on_clock, RELIABLE, raw=True)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, RELIABLE)

    def _on_output(self, camera: str, name: str, conn: Any, data: bytes,
                   info: Dict[str, Any]) -> None:
        stamp, fid = cdr_header(data)
        self.last_arrival = time.monotonic()
        received = info.get('received_timestamp') or time.time_ns()
        self.arrivals[(camera, name)][stamp] = (info.get('source_timestamp') or received,
                                                received)
        self.frame_ids[(camera, name)].add(fid)
        self._writer.write(conn, stamp, data)

    def _on_table(self, conn: Any, data: bytes) -> None:
        self.class_table = ros_types.deserialize(data, ros_types.STRING).data
        self._writer.write(conn, self._table_time, data)

    def _on_clock(self, data: bytes, info: Dict[str, Any]) -> None:
        sec, nanosec = struct.unpack_from('<iI' if data[1] == 1 else '>iI', data, 4)
        self.clock_points.append((sec * 1_000_000_000 + nanosec,
                                  info.get('source_timestamp') or time.time_ns()))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        # Windowed figures (fps, latency) read 'n/a' once the frames stop; keep the last measured.
        for status in msg.status:
            values = self.status.setdefault(status.name, {})
            values.update({kv.key: kv.value for kv in status.values
                           if kv.value != 'n/a' or kv.key not in values})

    def camera_status(self, camera: str) -> Optional[Dict[str, str]]:
        """Return the node's latest diagnostics of a camera, or None before the first."""
        return self.status.get(f'{NODE_NAME}: camera {drive_topic(camera)}')

    def pipeline_status(self) -> Dict[str, str]:
        return self.status.get(f'{NODE_NAME}: pipeline', {})

    def node_ready(self, cameras: Sequence[str]) -> bool:
        """Tell whether the node reports this recorder on every output of every camera."""
        for cam in cameras:
            st = self.camera_status(cam)
            if st is None or any(int(st.get(f'subscribers_{n}', '0')) < 1 for n in OUTPUTS):
                return False
        return True

    def node_done(self, cameras: Sequence[str], sent: int) -> bool:
        """Tell whether the node received every sent frame and segmented or dropped each."""
        for cam in cameras:
            st = self.camera_status(cam)
            if st is None:
                return False
            received, processed = int(st['frames_received']), int(st['frames_processed'])
            dropped = sum(int(st.get(k, 0)) for k in (
                'dropped_overwritten', 'dropped_malformed', 'dropped_failed',
                'skipped_no_subscribers'))
            if received < sent or processed + dropped < received:
                return False
        return True

    def missing(self, camera: str) -> Dict[str, int]:
        """Count the outputs the node published (by its diagnostics) that did not arrive here."""
        processed = int((self.camera_status(camera) or {}).get('frames_processed', 0))
        return {n: processed - len(self.arrivals[(camera, n)]) for n in OUTPUTS}

    def finished(self, cameras: Sequence[str], sent: int, settle_s: float) -> bool:
        """
        Tell whether every sent frame is accounted for, or nothing more is coming.

        Accounted for: the node received it and dropped it, or segmented it and all its outputs
        reached this recorder. Outputs still missing ``settle_s`` after the last one arrived
        are taken as lost.
        """
        if not self.node_done(cameras, sent):
            return False
        if all(v <= 0 for cam in cameras for v in self.missing(cam).values()):
            return True
        return time.monotonic() - self.last_arrival > settle_s


def console_command(script: str, module: str) -> List[str]:
    """Return the console script installed next to this Python, else ``python -m module``."""
    exe = Path(sys.executable).with_name(script)
    return [str(exe)] if exe.exists() else [sys.executable, '-m', module]


def start_process(cmd: Sequence[str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr going to ``log_path``."""
    _logger.info('starting %s (log %s)', ' '.join(cmd), log_path)
    with open(log_path, 'wb') as log:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **CHILD_ENV))


def stop_process(proc: subprocess.Popen, name: str, timeout: float = 20.0) -> Optional[int]:
    """SIGINT (as Ctrl-C), wait; kill after ``timeout`` s. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _logger.warning('%s ignored SIGINT for %.0f s; killing it', name, timeout)
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return '(no log)'


@dataclass
class GraphRun:
    """What the graph part of the demo measured."""

    seconds: Dict[str, float]
    replay_rc: int
    node_rc: Optional[int]
    node_done: bool   # the node received every frame and segmented or dropped each


def run_graph(spec: DriveSpec, drive: Path, recorder: Recorder, model: Path, device: str,
              rate: float, out_dir: Path, startup_timeout: float, drain_timeout: float,
              progress: bool = True) -> GraphRun:
    """Start the node, wait until it serves the recorder, replay the drive, drain, stop."""
    executor = SingleThreadedExecutor(context=recorder.context)
    executor.add_node(recorder)
    seconds: Dict[str, float] = {}
    node_log, replay_log = out_dir / 'node.log', out_dir / 'replay.log'
    cameras = '[' + ', '.join(spec.cameras) + ']'
    node = start_process(console_command(NODE_NAME, 'seg_perception.node') + [
        '--ros-args', '-p', f'model:={model}', '-p', f'cameras:={cameras}', '-p',
        f'device:={device}', '-p', 'reliability:=reliable', '-p', 'depth:=10', '-p',
        'use_sim_time:=true'], node_log)
    replay = None
    node_rc = None

    def spin_until(done: Callable[[], bool], timeout: float, what: str,
                   bar: Optional[tqdm] = None) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if node.poll() is not None:
                raise DemoError(f'{NODE_NAME} exited with status {node.returncode} '
                                f'{what}; {node_log}:\n{log_tail(node_log)}')
            if time.monotonic() > deadline:
                return False
            executor.spin_once(timeout_sec=0.1)
            if bar is not None and recorder.clock_points:
                bar.update(round((recorder.clock_points[-1][0] - spec.start_ns) / 1e9, 1)
                           - bar.n)
        return True

    try:
        t0 = time.monotonic()
        if not spin_until(lambda: recorder.node_ready(spec.cameras), startup_timeout,
                          'while starting'):
            raise DemoError(f'{NODE_NAME} did not serve the recorder within {startup_timeout:.0f}'
                            f' s; {node_log}:\n{log_tail(node_log)}')
        seconds['node_startup'] = time.monotonic() - t0
        t0 = time.monotonic()
        replay = start_process(console_command('seg-replay', 'seg_perception.replay') + [
            str(drive), '--rate', f'{rate:g}', '--qos', 'reliable',
            '--wait-for-subscribers', '30', '--delay', f'{REPLAY_DELAY_S:g}', '--no-progress'],
            replay_log)
        with tqdm(total=round((spec.n_frames - 1) / spec.fps, 1), desc='replaying', unit='s',
                  disable=not progress, dynamic_ncols=True,
                  bar_format='{l_bar}{bar}| {n:.1f}/{total:.1f} s of drive') as bar:
            replay_timeout = spec.seconds / rate + 60.0
            if not spin_until(lambda: replay.poll() is not None, replay_timeout,
                              'during the replay', bar):
                raise DemoError(f'seg-replay did not finish within {replay_timeout:.0f} s; '
                                f'{replay_log}:\n{log_tail(replay_log)}')
        seconds['replay'] = time.monotonic() - t0
        if replay.returncode != 0:
            raise DemoError(f'seg-replay failed with status {replay.returncode}; '
                            f'{replay_log}:\n{log_tail(replay_log)}')
        t0 = time.monotonic()
        if not spin_until(lambda: recorder.finished(spec.cameras, spec.n_frames, SETTLE_S),
                          drain_timeout, 'while finishing'):
            _logger.warning('not every frame was accounted for %.0f s after the replay; '
                            'reporting what arrived', drain_timeout)
        node_done = recorder.node_done(spec.cameras, spec.n_frames)
        seconds['drain'] = time.monotonic() - t0
    finally:
        if replay is not None:
            stop_process(replay, 'seg-replay')
        node_rc = stop_process(node, NODE_NAME)
        executor.remove_node(recorder)
        executor.shutdown()
    return GraphRun(seconds, replay.returncode, node_rc, node_done)
