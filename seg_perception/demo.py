"""
The bundled demo drive (``make demo``): a synthetic two-camera drive through the node over DDS.

1. Record a synthetic drive (``seg_training.synth.render_sequence``, front and rear camera of
   one world) as a rosbag2 (mcap) with ``/front/image`` and ``/rear/image``; an existing drive
   with the same parameters is reused.
2. Start ``segmentation_node`` (cameras front and rear, reliable input, ``use_sim_time``), record
   its ``<camera>/segmentation/{labels,color,overlay,class_table}`` into a second bag from this
   process, and play the drive into the graph with ``seg-replay`` (with ``/clock``).
3. Write the front and rear overlays side by side as an mp4, a contact sheet PNG (inputs and
   overlays at a few times, with the model's class colours) and ``summary.json``.
4. Print frames sent and segmented per camera, fps, latency percentiles and drops.

Latency is wall-clock time from replay publishing a frame to this process receiving all of its
outputs. The node runs on sim time, so the publish time of a frame comes from the ``/clock``
message replay sends just before it (its DDS source timestamp), and the receipt time from the
DDS reception timestamp of each output.
"""

import argparse
from collections import defaultdict
import csv
from dataclasses import asdict, dataclass
import itertools
import json
import logging
import math
import os
from pathlib import Path
import signal
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Writer
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import String
from tqdm import tqdm
import yaml

from seg_perception import ros_types
from seg_perception.bag import AtomicBagWriter, LATCHED_QOS
from seg_perception.resources import default_model_path, ResourceNotFoundError
from seg_training.classes import ClassTable
from seg_training.cli import size_arg
from seg_training.synth import render_sequence
from seg_training.synth_style import DOMAINS

_logger = logging.getLogger(__name__)

CAMERAS = ('front', 'rear')
OUTPUTS = ('labels', 'color', 'overlay')
FPS = 10.0                            # the synthetic world moves in steps of 0.1 s
START_NS = 1_700_000_000_000_000_000  # header stamp of the first frame (a fixed date)
DRIVE_KEY = 'seg_perception.demo_drive'
NODE_NAME = 'segmentation_node'
LEGEND_COLUMNS = 10
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


class DemoError(RuntimeError):
    """The demo cannot go on; the message says which step failed and where its log is."""


# --- 1. the drive --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DriveSpec:
    """The synthetic drive's parameters; the same parameters give the same bag."""

    seed: int = 7
    seconds: float = 12.0
    size: Tuple[int, int] = (512, 256)     # (W, H) of both cameras
    domain: str = 'source'
    fps: float = FPS
    start_ns: int = START_NS
    cameras: Tuple[str, ...] = CAMERAS

    @property
    def n_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    def stamps(self) -> List[int]:
        """Return the header stamp in ns of each frame, the same for every camera (one trigger)."""
        return [self.start_ns + int(round(i * 1e9 / self.fps)) for i in range(self.n_frames)]

    def to_json(self) -> str:
        d = asdict(self)
        d['size'], d['cameras'] = list(self.size), list(self.cameras)
        return json.dumps(d, sort_keys=True)


def drive_topic(camera: str) -> str:
    return f'/{camera}/image'


def frame_id(camera: str) -> str:
    return f'{camera}_camera'


def recorded_spec(path: Path) -> Optional[str]:
    """Return the drive parameters stored in a bag's metadata, or None for no such demo bag."""
    try:
        meta = yaml.safe_load((path / 'metadata.yaml').read_text())
        return meta['rosbag2_bagfile_information']['custom_data'][DRIVE_KEY]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def record_drive(spec: DriveSpec, path: Path, progress: bool = True) -> bool:
    """
    Write the drive as an mcap rosbag2 at ``path`` unless it holds this drive already.

    Returns True when the bag was (re)written. The bag appears only when complete.
    """
    if recorded_spec(path) == spec.to_json():
        return False
    ts = ros_types.typestore()
    w, h = spec.size
    frames = {cam: render_sequence(spec.seed, spec.n_frames, (w, h), spec.domain, view=cam)
              for cam in spec.cameras}
    with AtomicBagWriter(path, 'mcap', overwrite=True) as writer:
        writer.set_custom_data(DRIVE_KEY, spec.to_json())
        conns = {cam: writer.add_connection(drive_topic(cam), ros_types.IMAGE, typestore=ts)
                 for cam in spec.cameras}
        for stamp in tqdm(spec.stamps(), desc='recording the drive', unit='frame',
                          disable=not progress, dynamic_ncols=True):
            for cam in spec.cameras:
                rgb, _ = next(frames[cam])                          # (H, W, 3) uint8
                header = ros_types.make_header(stamp, frame_id(cam))
                writer.write(conns[cam], stamp, ros_types.image_cdr(header, rgb, 'rgb8'))
    return True


# --- 2. the graph: node, recorder, replay --------------------------------------------------------

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


# --- 3. analysis, video and contact sheet --------------------------------------------------------

def publish_times(clock_points: Sequence[Tuple[int, int]], stamps: Sequence[int],
                  rate: float = 1.0) -> np.ndarray:
    """
    Return the wall time (ns, float) at which replay published each stamp.

    Replay sends ``/clock`` = a frame's stamp right before the frame, so the first /clock message
    with that value gives its publish time. For a stamp without one (e.g. sent before this
    subscription matched), the /clock ticks give it: replay ticks ``clock = first + rate x
    (wall - start)``, so ``wall - clock / rate`` is a constant plus delays, whose minimum
    maps any stamp to the time it was due.
    """
    if not clock_points:
        return np.full(len(stamps), np.nan)
    points = np.array(sorted(clock_points), dtype=np.int64)     # (N, 2) by clock, then wall
    clock, first = np.unique(points[:, 0], return_index=True)     # first = earliest publish
    wall = points[first, 1]
    c0, w0 = int(clock[0]), int(wall[0])
    offset = np.min((wall - w0) - (clock - c0) / rate)             # ns, after w0
    exact = dict(zip(clock.tolist(), wall.tolist()))
    return np.array([exact[s] if s in exact else w0 + offset + (s - c0) / rate for s in stamps],
                    dtype=np.float64)


def percentiles_ms(values_ns: Sequence[float]) -> Dict[str, Optional[float]]:
    """Return p50/p90/p99/max/mean in ms (None without values)."""
    v = np.asarray(values_ns, dtype=np.float64) / 1e6
    if v.size == 0:
        return {k: None for k in ('p50', 'p90', 'p99', 'max', 'mean')}
    return {'p50': round(float(np.percentile(v, 50)), 1),
            'p90': round(float(np.percentile(v, 90)), 1),
            'p99': round(float(np.percentile(v, 99)), 1),
            'max': round(float(v.max()), 1), 'mean': round(float(v.mean()), 1)}


@dataclass
class FrameTimes:
    """Wall times (ns) of the frames of one camera whose every output arrived, by stamp."""

    stamps: List[int]
    published: np.ndarray        # replay published the frame
    node_published: np.ndarray   # the node published its last output
    received: np.ndarray         # the last output arrived here

    @classmethod
    def of(cls, recorder: Recorder, camera: str, rate: float) -> 'FrameTimes':
        arrivals = [recorder.arrivals[(camera, n)] for n in OUTPUTS]
        done = sorted(set.intersection(*(set(a) for a in arrivals)))
        times = np.array([[max(a[s][k] for a in arrivals) for k in (0, 1)] for s in done],
                         dtype=np.float64).reshape(-1, 2)       # (frames, 2)
        return cls(done, publish_times(recorder.clock_points, done, rate), times[:, 0],
                   times[:, 1])


def camera_summary(spec: DriveSpec, recorder: Recorder, camera: str,
                   rate: float) -> Dict[str, Any]:
    """Frames, drops, fps, latency and stamp checks of one camera."""
    stamps = spec.stamps()
    arrivals = {n: recorder.arrivals[(camera, n)] for n in OUTPUTS}
    times = FrameTimes.of(recorder, camera, rate)
    latency = times.received - times.published
    in_node = times.node_published - times.published
    st = recorder.camera_status(camera) or {}
    ids = set().union(*(recorder.frame_ids[(camera, n)] for n in OUTPUTS))
    return {
        'topic': drive_topic(camera),
        'frames_sent': len(stamps),
        'node_frames_received': int(st.get('frames_received', 0)),
        'node_frames_processed': int(st.get('frames_processed', 0)),
        'dropped_overwritten': int(st.get('dropped_overwritten', 0)),
        'dropped_malformed': int(st.get('dropped_malformed', 0)),
        'outputs_received': {n: len(a) for n, a in arrivals.items()},
        'outputs_lost': recorder.missing(camera),
        'frames_with_all_outputs': len(times.stamps),
        # frames segmented per second of replayed drive
        'fps': round(int(st.get('frames_processed', 0)) * spec.fps * rate / len(stamps), 2),
        'latency_ms': percentiles_ms(latency[np.isfinite(latency)]),
        'node_publish_latency_ms': percentiles_ms(in_node[np.isfinite(in_node)]),
        'node_sim_latency_ms': {'p50': st.get('latency_p50_ms'),
                                'p99': st.get('latency_p99_ms')},
        'stamps_match_input': all(set(a) <= set(stamps) for a in arrivals.values()),
        'frame_ids': sorted(ids),
    }


def write_frames_csv(spec: DriveSpec, recorder: Recorder, rate: float, path: Path) -> None:
    """Write one row per segmented frame: camera, stamp, publish and receipt times, latency."""
    with open(path, 'w', newline='') as f:
        out = csv.writer(f)
        out.writerow(['camera', 'stamp', 'drive_time_s', 'replay_published_wall_ns',
                      'node_published_wall_ns', 'received_wall_ns', 'node_latency_ms',
                      'latency_ms'])
        for cam in spec.cameras:
            t = FrameTimes.of(recorder, cam, rate)
            for stamp, pub, node, rec in zip(t.stamps, t.published, t.node_published,
                                             t.received):
                out.writerow([cam, ros_types.format_time(stamp),
                              f'{(stamp - spec.start_ns) / 1e9:.1f}', f'{pub:.0f}', f'{node:.0f}',
                              f'{rec:.0f}', f'{(node - pub) / 1e6:.1f}',
                              f'{(rec - pub) / 1e6:.1f}'])


def read_images(bag: Path, topics: Sequence[str], wanted: Optional[set] = None
                ) -> Dict[Tuple[str, int], np.ndarray]:
    """Decode the Image messages of ``topics`` (optionally only bag times in ``wanted``)."""
    images = {}
    with ros_types.open_reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, t, data in ros_types.read_messages(reader, conns):
            if wanted is None or t in wanted:
                images[(conn.topic, t)] = ros_types.decode_image(data, conn.msgtype).image
    return images


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top left corner of a copy of a BGR image."""
    out = np.ascontiguousarray(image).copy()
    scale = max(0.4, out.shape[0] / 400)
    org = (8, int(22 * scale) + 4)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_video(spec: DriveSpec, segmented: Path, path: Path) -> Dict[str, Any]:
    """
    Write the overlays of all cameras side by side at the drive's rate (mp4, 'mp4v').

    One video frame per drive frame, from the first time every camera has an overlay; a frame
    the node dropped shows that camera's previous overlay (as a viewer would have seen it).
    """
    topics = {f'/{cam}/segmentation/overlay': cam for cam in spec.cameras}
    w, h = spec.size
    size = (w * len(spec.cameras), h)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), spec.fps, size)
    if not writer.isOpened():
        raise DemoError(f'{path}: OpenCV cannot write mp4 (mp4v) video here')
    latest: Dict[str, Tuple[int, np.ndarray]] = {}
    frames = 0
    stamps = iter(spec.stamps())
    pending = next(stamps, None)

    def emit_until(limit: Optional[int]) -> None:
        nonlocal pending, frames
        while pending is not None and (limit is None or pending < limit):
            if len(latest) == len(spec.cameras):
                tiles = []
                for cam in spec.cameras:
                    stamp, image = latest[cam]
                    tile = cv2.resize(image, (w, h)) if image.shape[:2] != (h, w) else image
                    text = f'{cam} {(stamp - spec.start_ns) / 1e9:.1f} s'
                    tiles.append(caption(tile[:, :, ::-1], text))
                writer.write(np.concatenate(tiles, axis=1))           # (H, cameras x W, 3)
                frames += 1
            pending = next(stamps, None)

    try:
        with ros_types.open_reader(segmented) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            messages = ros_types.read_messages(reader, conns)
            for t, group in itertools.groupby(messages, key=lambda m: m[1]):
                emit_until(t)
                for conn, _, data in group:
                    frame = ros_types.decode_image(data, conn.msgtype)
                    rgb = frame.image if frame.encoding != 'bgr8' else frame.image[:, :, ::-1]
                    latest[topics[conn.topic]] = (t, rgb)
            emit_until(None)
    finally:
        writer.release()
    return {'path': str(path), 'frames': frames, 'fps': spec.fps, 'size': list(size)}


def choose_times(spec: DriveSpec, done: Sequence[int], rows: int) -> List[int]:
    """Pick ``rows`` stamps spread over the drive among those segmented for every camera."""
    if not done:
        return []
    picks = np.linspace(0, len(done) - 1, min(rows, len(done))).round().astype(int)
    return [done[i] for i in sorted(set(picks.tolist()))]


def write_contact_sheet(spec: DriveSpec, drive: Path, segmented: Path, times: Sequence[int],
                        classes: Optional[ClassTable], title: str, path: Path) -> Dict[str, Any]:
    """Draw inputs and overlays of every camera at ``times`` (rows), with a colour legend."""
    wanted = set(times)
    inputs = read_images(drive, [drive_topic(c) for c in spec.cameras], wanted)
    overlays = read_images(segmented, [f'/{c}/segmentation/overlay' for c in spec.cameras],
                           wanted)
    cols, rows = 2 * len(spec.cameras), len(times)
    w, h = spec.size
    fig_w, left, right, space = 16.0, 0.35, 0.05, 0.05       # inches
    cell_w = (fig_w - left - right - (cols - 1) * space) / cols
    cell_h = cell_w * h / w
    title_h, legend_h = 0.6, 0.0
    if classes is not None:
        legend_h = 0.3 + 0.22 * math.ceil(len(classes) / LEGEND_COLUMNS)
    fig_h = title_h + rows * cell_h + (rows - 1) * space + legend_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, cols, left=left / fig_w, right=1 - right / fig_w,
                            top=1 - title_h / fig_h, bottom=legend_h / fig_h,
                            wspace=space / cell_w, hspace=space / cell_h)
    for r, stamp in enumerate(times):
        for c, cam in enumerate(spec.cameras):
            for k, (kind, image) in enumerate((
                    ('input', inputs.get((drive_topic(cam), stamp))),
                    ('overlay', overlays.get((f'/{cam}/segmentation/overlay', stamp))))):
                ax = fig.add_subplot(grid[r, 2 * c + k])
                if image is not None:
                    ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f'{cam} camera: {kind}', fontsize=11)
                if c == 0 and k == 0:
                    ax.set_ylabel(f't = {(stamp - spec.start_ns) / 1e9:.1f} s', fontsize=11)
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / fig_h, va='top')
    if classes is not None:
        handles = [Patch(facecolor=np.asarray(col) / 255.0, edgecolor='black', linewidth=0.4,
                         label=name) for name, col in zip(classes.names, classes.colors)]
        fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), LEGEND_COLUMNS),
                   fontsize=9, frameon=False, handlelength=1.2, columnspacing=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return {'path': str(path), 'times_s': [round((t - spec.start_ns) / 1e9, 2) for t in times]}


# --- 4. the command ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m seg_perception.demo', description='Record a synthetic front/rear drive, '
        'replay it into segmentation_node over DDS, record the outputs and write an overlay '
        'video, a contact sheet and a summary.')
    p.add_argument('--output-dir', type=Path, default=Path('out/demo'), help='output folder')
    p.add_argument('--model', type=Path, default=None,
                   help='model file (default: the bundled models/erfnet_synth.pt)')
    p.add_argument('--device', default='auto', help='node device: auto, cpu, cuda, cuda:N')
    p.add_argument('--seconds', type=float, default=12.0, help='length of the drive')
    p.add_argument('--size', type=size_arg, default=(512, 256), metavar='WxH',
                   help='camera image size')
    p.add_argument('--seed', type=int, default=DriveSpec.seed, help='which synthetic drive')
    p.add_argument('--domain', choices=DOMAINS, default='source',
                   help="synthetic look: 'source' (Cityscapes-like) or 'target' (another car)")
    p.add_argument('--rate', type=float, default=1.0, help='replay speed factor')
    p.add_argument('--rows', type=int, default=4, help='times shown on the contact sheet')
    p.add_argument('--startup-timeout', type=float, default=120.0, metavar='SEC',
                   help='how long the node may take to load its model')
    p.add_argument('--drain-timeout', type=float, default=30.0, metavar='SEC',
                   help='how long to wait for the last outputs after the replay')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--log-level', default='WARNING', help='logging level (e.g. INFO)')
    return p


def check_args(args: argparse.Namespace) -> None:
    """Raise DemoError for values the demo cannot run with."""
    if args.seconds <= 0 or args.seconds > 600:
        raise DemoError(f'--seconds {args.seconds:g} must be in (0, 600]')
    if min(args.size) < 16:
        raise DemoError(f'--size {args.size[0]}x{args.size[1]}: at least 16 px each way')
    if args.rate <= 0:
        raise DemoError(f'--rate {args.rate:g} must be > 0')
    if args.rows < 1:
        raise DemoError(f'--rows {args.rows} must be >= 1')


def resolve_model(model: Optional[Path]) -> Path:
    if model is None:
        try:
            return default_model_path()
        except ResourceNotFoundError as e:
            raise DemoError(str(e)) from None
    if not model.is_file():
        raise DemoError(f'--model {model}: no such file')
    return model.resolve()


def _short(path: str) -> str:
    """Return ``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _ms_text(values: Dict[str, Optional[float]], keys: Sequence[str], sep: str) -> str:
    return sep.join('-' if values[k] is None else f'{values[k]:.0f}' for k in keys)


def report(summary: Dict[str, Any]) -> str:
    """Return the printed report of a summary."""
    drive, pipe = summary['drive'], summary['node']
    lines = [f'seg_perception demo: {drive["frames_per_camera"]} frames per camera, '
             f'{drive["size"][0]}x{drive["size"][1]} at {drive["fps"]:g} Hz, replay '
             f'{summary["replay_rate"]:g}x, {NODE_NAME} on {pipe.get("device", "?")}',
             f'  model {_short(summary["model"])} (network input {pipe.get("input_size", "-")})',
             f'  {"camera":8}{"sent":>5}{"node in":>9}{"segmented":>11}{"dropped":>9}'
             f'{"fps":>6}   latency p50/p90/p99 ms   in node p50/p99']
    for cam, c in summary['cameras'].items():
        lines.append(f'  {cam:8}{c["frames_sent"]:>5}{c["node_frames_received"]:>9}'
                     f'{c["node_frames_processed"]:>11}'
                     f'{c["dropped_overwritten"] + c["dropped_malformed"]:>9}{c["fps"]:>6.1f}   '
                     f'{_ms_text(c["latency_ms"], ("p50", "p90", "p99"), "/"):<25}'
                     f'{_ms_text(c["node_publish_latency_ms"], ("p50", "p99"), "/")}')
    lines += [f'  node: forward pass p50 {pipe.get("inference_p50_ms", "-")} ms, '
              f'{pipe.get("batches", "-")} batches of up to {pipe.get("batch_size_max", "-")} '
              'frames',
              '  fps: frames segmented per second of drive; dropped: replaced by a newer frame',
              '  latency: replay publishing a frame -> all its outputs here; in node: -> the node',
              '  publishing them (wall clock)']
    lost = [f'{cam} {name} {n}' for cam, c in summary['cameras'].items()
            for name, n in c['outputs_lost'].items() if n > 0]
    if lost:
        lines.append('  warning: published by the node, never received here: ' + ', '.join(lost))
    if not summary['node_done']:
        lines.append('  warning: the node had not answered every frame when it was stopped')
    paths = [Path(p) for p in summary['outputs'].values()]
    folder = Path(os.path.commonpath(paths))
    lines += textwrap.wrap(f'wrote {folder}/: ' + ', '.join(
        f'{p.relative_to(folder)}{"/" if p.is_dir() else ""}' for p in paths), 99,
        subsequent_indent='  ')
    lines.append(f'took {summary["seconds"]["total"]:.0f} s')
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the whole demo; returns the summary (also written to summary.json)."""
    t_start = time.monotonic()
    check_args(args)
    model = resolve_model(args.model)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    spec = DriveSpec(seed=args.seed, seconds=args.seconds, size=tuple(args.size),
                     domain=args.domain)
    paths = {'drive': out / 'drive', 'segmented': out / 'segmented',
             'video': out / 'overlay.mp4', 'contact_sheet': out / 'contact_sheet.png',
             'frames': out / 'frames.csv', 'node_log': out / 'node.log',
             'replay_log': out / 'replay.log', 'summary': out / 'summary.json'}
    t0 = time.monotonic()
    written = record_drive(spec, paths['drive'], progress=not args.no_progress)
    seconds = {'drive': time.monotonic() - t0}
    _logger.info('%s drive %s', 'recorded' if written else 'reused', paths['drive'])
    context = Context()  # the demo's own, so it can run inside another rclpy program
    rclpy.init(args=[], context=context)
    try:
        with AtomicBagWriter(paths['segmented'], 'mcap', overwrite=True) as writer:
            recorder = Recorder(writer, spec.cameras, spec.start_ns, context)
            try:
                graph = run_graph(spec, paths['drive'], recorder, model, args.device, args.rate,
                                  out, args.startup_timeout, args.drain_timeout,
                                  progress=not args.no_progress)
            finally:
                recorder.destroy_node()
    finally:
        context.try_shutdown()
    seconds.update(graph.seconds)
    t0 = time.monotonic()
    cameras = {cam: camera_summary(spec, recorder, cam, args.rate) for cam in spec.cameras}
    write_frames_csv(spec, recorder, args.rate, paths['frames'])
    done = sorted(set.intersection(*(set(recorder.arrivals[(c, 'overlay')])
                                     for c in spec.cameras)))
    classes = (ClassTable.from_dict(json.loads(recorder.class_table))
               if recorder.class_table else None)
    video = write_video(spec, paths['segmented'], paths['video'])
    title = (f'seg_perception demo drive: {model.name}, {spec.size[0]}x{spec.size[1]} front '
             f'and rear cameras, seed {spec.seed} ({spec.domain} look)')
    sheet = write_contact_sheet(spec, paths['drive'], paths['segmented'],
                                choose_times(spec, done, args.rows), classes, title,
                                paths['contact_sheet'])
    seconds['media'] = time.monotonic() - t0
    seconds['total'] = time.monotonic() - t_start
    summary = {
        'model': str(model),
        'drive': {'path': str(paths['drive']), 'recorded': written,
                  'frames_per_camera': spec.n_frames, 'fps': spec.fps, 'size': list(spec.size),
                  'seed': spec.seed, 'domain': spec.domain, 'cameras': list(spec.cameras),
                  'start_stamp': ros_types.format_time(spec.start_ns)},
        'replay_rate': args.rate,
        'node_done': graph.node_done,
        'clock_messages': len(recorder.clock_points),
        'exit_status': {'replay': graph.replay_rc, 'node': graph.node_rc},
        'cameras': cameras,
        'node': recorder.pipeline_status(),
        'video': video,
        'contact_sheet': sheet,
        'outputs': {k: str(v) for k, v in paths.items()},
        'seconds': {k: round(v, 2) for k, v in seconds.items()},
    }
    paths['summary'].write_text(json.dumps(summary, indent=2) + '\n')
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(levelname)s %(name)s: %(message)s')
    # The demo's own graph: this machine only, large frames through shared memory. Children
    # inherit these; values already set (e.g. by the Makefile or the user) are kept.
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
    try:
        summary = run(args)
    except DemoError as e:
        print(f'demo: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('demo: interrupted', file=sys.stderr)
        return 130
    print(report(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
