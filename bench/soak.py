#!/usr/bin/env python3
"""
Soak segmentation_node: two cameras at their full rate, one malformed frame in twenty.

    python bench/soak.py [--duration 600] [--size 512x256] [--output bench/results]

The node runs in its own process with ``cameras:=[front, rear]``; this process is both cameras
and the consumer of their ``segmentation/labels``. Each camera publishes its next good frame as
soon as the node has answered the previous one (the highest rate the node sustains), and before
every twentieth good frame a malformed one (truncated data, an unknown encoding, a row step
shorter than a row, a zero size, in turn). A good frame not answered within ``--answer-timeout``
seconds counts as lost. After a warm-up (``--warmup`` answered frames per camera, not counted)
the node's resident memory is read from /proc, then every ``--rss-period`` seconds and at the
end. The report (printed, and saved as ``<output>/soak-<date>[-<tag>].json``) gives per camera
the good frames sent and answered, the malformed frames sent and the node's
``dropped_malformed`` count from /diagnostics, the answer latency, the RSS at start and end and
its growth, the load average, and ``passed``: no good frame lost, every malformed frame
counted, RSS growth < 5 %. The exit status is 0 when it passed.

Only the node's public topics and parameters are used. Its input QoS is depth 5 (so a
malformed frame is not replaced by the good one right behind it) and ``--reliability``
(default reliable: the soak measures the node, not DDS; ``best_effort`` with large frames also
needs the Fast DDS profile of README "Large frames and best effort").
"""

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CAMERAS = ('front', 'rear')
MALFORMED_EVERY = 20
STARTUP_S = 180.0   # a loaded 2-core machine imports torch and rclpy slowly
GROWTH_LIMIT = 0.05
DDS_VARS = ('RMW_IMPLEMENTATION', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_BUILTIN_TRANSPORTS',
            'FASTDDS_DEFAULT_PROFILES_FILE', 'RMW_FASTRTPS_USE_QOS_FROM_XML')
# The node's input depth: a malformed frame and the good one published right after it both
# reach the node (with depth 1 the good one may replace the malformed one in DDS's queue).
INPUT_DEPTH = 5
WARMUP_RESEND_S = 5.0  # an unanswered warm-up frame is replaced after this


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``WxH`` into (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size {text!r}: expected WxH, e.g. 512x256') from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f'size {text!r}: width and height must be positive')
    return w, h


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS in /proc/<pid>/status)."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f'/proc/{pid}/status has no VmRSS line')


class NodeProcess:
    """segmentation_node in a subprocess, its output in a log file."""

    def __init__(self, params: Sequence[str], log_path: Path) -> None:
        """Start the node with ``params`` (``name:=value``), its output in ``log_path``."""
        exe = Path(sys.executable).with_name('segmentation_node')
        cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'seg_perception.node']
        cmd += ['--ros-args'] + [arg for p in params for arg in ('-p', p)]
        env = dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM='0', PYTHONUNBUFFERED='1')
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def check_running(self) -> None:
        """Raise RuntimeError with the log's end when the node has exited."""
        rc = self.proc.poll()
        if rc is not None:
            raise RuntimeError(f'segmentation_node exited with {rc}:\n{self.log_tail()}')

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the node's output."""
        return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGINT (as Ctrl-C), wait, kill after ``timeout`` s; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Camera:
    """One camera: publishes the next frame when the previous good one was answered."""

    def __init__(self, name: str, node, size: Tuple[int, int], qos, seed: int) -> None:
        from sensor_msgs.msg import Image

        self.name = name
        self.pub = node.create_publisher(Image, f'{name}/image', qos)
        w, h = size
        rng = np.random.default_rng(seed)
        # a few different frames, so the node never sees the same pixels twice in a row
        self.frames = [rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()
                       for _ in range(4)]
        self.size = size
        self.pending: Optional[Tuple[int, int]] = None  # (sec, nanosec) of the unanswered frame
        self.sent_at = 0.0
        self.counting = False
        self.good_sent = self.answered = self.lost = self.malformed_sent = 0
        self.replies = 0  # answers, warm-up included
        self.latencies: List[float] = []

    def on_labels(self, msg) -> None:
        """Count the answer to the pending frame (labels with its stamp)."""
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if self.pending is not None and stamp == self.pending:
            self.replies += 1
            if self.counting:
                self.answered += 1
                self.latencies.append(time.monotonic() - self.sent_at)
            self.pending = None

    def send(self, stamp, index: int) -> None:
        """Publish good frame ``index`` (and first a malformed one when its turn has come)."""
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        w, h = self.size
        header = Header(stamp=stamp, frame_id=self.name)
        if self.counting and index % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            self.pub.publish(malformed_image(header, w, h, self.malformed_sent))
            self.malformed_sent += 1
        self.pub.publish(Image(header=header, height=h, width=w, encoding='rgb8', step=w * 3,
                               data=self.frames[index % len(self.frames)]))
        self.pending = (stamp.sec, stamp.nanosec)
        self.sent_at = time.monotonic()
        if self.counting:
            self.good_sent += 1


def malformed_image(header, width: int, height: int, kind: int):
    """Return a malformed rgb8 Image, of one of four kinds in turn."""
    from sensor_msgs.msg import Image

    data = bytes(64)
    kinds = [
        dict(height=height, width=width, encoding='rgb8', step=width * 3, data=data),  # short
        dict(height=2, width=2, encoding='rgb9', step=6, data=bytes(12)),  # unknown encoding
        dict(height=2, width=4, encoding='rgb8', step=6, data=bytes(12)),  # step < row
        dict(height=0, width=0, encoding='rgb8', step=0, data=b''),  # zero size
    ]
    return Image(header=header, **kinds[kind % len(kinds)])


class Soak:
    """The probe side: two cameras, their labels subscriptions and /diagnostics."""

    def __init__(self, args: argparse.Namespace) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        rclpy.init(args=[])
        self.node = rclpy.create_node('soak_probe')
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        camera_qos = QoSProfile(depth=5, reliability=(
            ReliabilityPolicy.RELIABLE if args.reliability == 'reliable'
            else ReliabilityPolicy.BEST_EFFORT))
        self.cameras = [Camera(name, self.node, args.size, camera_qos, seed)
                        for seed, name in enumerate(CAMERAS)]
        for cam in self.cameras:
            self.node.create_subscription(Image, f'{cam.name}/segmentation/labels',
                                          cam.on_labels, reliable)
        self.diagnostics: Dict[str, Dict[str, str]] = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      reliable)
        self._last_ns = 0

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values}

    def camera_status(self, name: str) -> Optional[Dict[str, str]]:
        """Return the newest /diagnostics values of camera ``name``, None before the first."""
        for key, values in self.diagnostics.items():
            if key.endswith(f'camera /{name}/image'):
                return values
        return None

    def stamp(self):
        """Return the current time as a stamp no earlier frame had."""
        from builtin_interfaces.msg import Time

        ns = max(self.node.get_clock().now().nanoseconds, self._last_ns + 1)
        self._last_ns = ns
        return Time(sec=ns // 10**9, nanosec=ns % 10**9)

    def spin(self, seconds: float) -> None:
        """Handle the callbacks that are ready, waiting up to ``seconds`` for one."""
        import rclpy

        rclpy.spin_once(self.node, timeout_sec=seconds)

    def close(self) -> None:
        """Destroy the probe node and shut its ROS context down."""
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def run(args: argparse.Namespace, node: NodeProcess, soak: Soak) -> Dict:
    """Warm up, soak for ``args.duration`` s, and return the report's measurements."""
    index = {cam.name: 0 for cam in soak.cameras}

    def step(deadline_for_new: float) -> None:
        now = time.monotonic()
        for cam in soak.cameras:
            if cam.pending is not None and now - cam.sent_at > args.answer_timeout:
                if cam.counting:
                    cam.lost += 1
                cam.pending = None
            if cam.pending is None and now < deadline_for_new:
                cam.send(soak.stamp(), index[cam.name])
                index[cam.name] += 1
        soak.spin(0.005)

    # warm-up: --warmup answers per camera, not counted (the first frames also wait for
    # discovery, so an unanswered warm-up frame is replaced after WARMUP_RESEND_S)
    deadline = time.monotonic() + STARTUP_S
    while min(cam.replies for cam in soak.cameras) < args.warmup:
        node.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f'no warm-up answers within {STARTUP_S:.0f} s\n'
                               f'{node.log_tail()}')
        for cam in soak.cameras:
            if cam.pending is not None and time.monotonic() - cam.sent_at > WARMUP_RESEND_S:
                cam.pending = None
        step(float('inf'))
    while any(cam.pending is not None for cam in soak.cameras):  # let the last ones finish
        node.check_running()
        step(0.0)

    malformed_before = {cam.name: int((soak.camera_status(cam.name) or {})
                                      .get('dropped_malformed', 0)) for cam in soak.cameras}
    rss = [(0.0, rss_bytes(node.proc.pid))]
    load_start = round(os.getloadavg()[0], 2)
    for cam in soak.cameras:
        cam.counting = True
    start = time.monotonic()
    end = start + args.duration
    next_rss = start + args.rss_period
    while time.monotonic() < end or any(cam.pending is not None for cam in soak.cameras):
        node.check_running()
        step(end)
        if time.monotonic() >= next_rss:
            rss.append((round(time.monotonic() - start, 1), rss_bytes(node.proc.pid)))
            next_rss += args.rss_period
    seconds = time.monotonic() - start
    # the node's counts: wait for a /diagnostics message newer than the last malformed frame
    settle = time.monotonic() + 3 * args.diagnostics_period + 1.0
    while time.monotonic() < settle:
        soak.spin(0.05)
    rss.append((round(time.monotonic() - start, 1), rss_bytes(node.proc.pid)))
    return {'seconds': round(seconds, 1), 'rss': rss, 'load_start': load_start,
            'malformed_before': malformed_before}


def report(args: argparse.Namespace, soak: Soak, measured: Dict) -> Dict:
    """Assemble the JSON report and its pass/fail verdict."""
    cameras = {}
    for cam in soak.cameras:
        status = soak.camera_status(cam.name) or {}
        counted = (int(status['dropped_malformed']) - measured['malformed_before'][cam.name]
                   if 'dropped_malformed' in status else None)
        lat = np.asarray(cam.latencies) * 1e3
        cameras[cam.name] = {
            'good_sent': cam.good_sent, 'good_answered': cam.answered, 'good_lost': cam.lost,
            'malformed_sent': cam.malformed_sent, 'malformed_counted_by_node': counted,
            'answered_fps': round(cam.answered / measured['seconds'], 2),
            'latency_p50_ms': round(float(np.median(lat)), 1) if lat.size else None,
            'latency_p99_ms': round(float(np.percentile(lat, 99)), 1) if lat.size else None,
            'node_status': status,
        }
    rss = measured['rss']
    start_rss, end_rss = rss[0][1], rss[-1][1]
    growth = (end_rss - start_rss) / start_rss
    lost = sum(c['good_lost'] for c in cameras.values())
    unanswered = sum(c['good_sent'] - c['good_answered'] for c in cameras.values())
    malformed_ok = all(c['malformed_counted_by_node'] == c['malformed_sent']
                       for c in cameras.values())
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'host': platform.node(), 'cpus': os.cpu_count(),
        'duration_s': args.duration, 'measured_s': measured['seconds'],
        'frame': f'{args.size[0]}x{args.size[1]} rgb8', 'reliability': args.reliability,
        'node_params': node_params(args),
        'dds_environment': {k: os.environ[k] for k in DDS_VARS if k in os.environ},
        'malformed_every': MALFORMED_EVERY,
        'cameras': cameras,
        'rss_start_mb': round(start_rss / 2**20, 1), 'rss_end_mb': round(end_rss / 2**20, 1),
        'rss_max_mb': round(max(r for _, r in rss) / 2**20, 1),
        'rss_growth_percent': round(100 * growth, 2),
        'rss_samples_mb': [[t, round(r / 2**20, 1)] for t, r in rss],
        'load_average_1m': [measured['load_start'], round(os.getloadavg()[0], 2)],
        'passed': lost == 0 and unanswered == 0 and malformed_ok and growth < GROWTH_LIMIT,
    }


def node_params(args: argparse.Namespace) -> List[str]:
    """Return the node's parameters as ``name:=value``."""
    params = [f'cameras:=[{", ".join(CAMERAS)}]', f'device:={args.device}',
              f'reliability:={args.reliability}', f'depth:={INPUT_DEPTH}',
              f'diagnostics_period:={args.diagnostics_period}']
    if args.model:
        params.append(f'model:={args.model}')
    return params


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--duration', type=float, default=600.0, help='soak seconds (default 600)')
    p.add_argument('--size', type=parse_size, default=(512, 256),
                   help='camera frame size WxH, rgb8 (default 512x256)')
    p.add_argument('--model', default='', help='model file (default: the bundled one)')
    p.add_argument('--device', default='cpu', help='node device (default cpu)')
    p.add_argument('--reliability', choices=('reliable', 'best_effort'), default='reliable',
                   help='node input QoS and camera QoS (default reliable)')
    p.add_argument('--warmup', type=int, default=20, help='uncounted answers per camera first')
    p.add_argument('--answer-timeout', type=float, default=30.0,
                   help='seconds after which an unanswered good frame counts as lost')
    p.add_argument('--rss-period', type=float, default=10.0, help='seconds between RSS reads')
    p.add_argument('--diagnostics-period', type=float, default=1.0,
                   help="the node's diagnostics_period")
    p.add_argument('--output', type=Path, default=Path('bench/results'),
                   help='folder for soak-<date>[-<tag>].json (default bench/results)')
    p.add_argument('--tag', default='', help='suffix of the result file name')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the soak; return 0 when it passed."""
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='soak_') as tmp:
        soak = Soak(args)
        node = NodeProcess(node_params(args), Path(tmp) / 'node.log')
        try:
            measured = run(args, node, soak)
            result = report(args, soak, measured)
        finally:
            rc = node.stop()
            soak.close()
        result['node_exit_code'] = rc
    args.output.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    path = args.output / f'soak-{day}{"-" + args.tag if args.tag else ""}.json'
    path.write_text(json.dumps(result, indent=2) + '\n')
    for name, cam in result['cameras'].items():
        print(f'{name}: {cam["good_answered"]} / {cam["good_sent"]} good frames answered '
              f'({cam["good_lost"]} lost), {cam["answered_fps"]} fps, latency p50 '
              f'{cam["latency_p50_ms"]} ms; malformed {cam["malformed_sent"]} sent, '
              f'{cam["malformed_counted_by_node"]} counted by the node')
    print(f'node RSS {result["rss_start_mb"]} MB -> {result["rss_end_mb"]} MB '
          f'({result["rss_growth_percent"]:+.2f} %), load {result["load_average_1m"]}; '
          f'{"passed" if result["passed"] else "FAILED"}; saved {path}')
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
