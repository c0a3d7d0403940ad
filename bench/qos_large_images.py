#!/usr/bin/env python3
"""
Measure how many best-effort camera frames reach a subscriber in another process, per DDS setup.

    python bench/qos_large_images.py --output bench/results [--frames 80] [--rate 10]
        [--size 2048x1024] [--config NAME ...] [--profile config/fastdds_large_images.xml]

For each configuration (a set of Fast DDS environment variables) a subscriber process and a
camera process are started with that environment. The camera publishes ``--frames`` rgb8 frames
of ``--size`` at ``--rate`` Hz with sensor-data QoS (best effort, keep last 5), as camera drivers
do; the subscriber listens best effort with keep last ``--depth`` (the node's default input QoS,
depth 1) and counts the frames it gets, and their latency from the header stamp. The camera
starts once it has matched the subscriber and discovery has settled, so the count measures the
transport, not discovery.

Configurations (``--config``, default all): ``default`` (Fast DDS defaults: UDP and shared
memory), ``large_data`` (``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``), ``large_data_1mb``
(LARGE_DATA with 1 MB messages and socket buffers), ``udp_4mb`` (UDPv4 only, 4 MB socket
buffers), ``profile`` (the XML profile given by ``--profile``, through
``FASTDDS_DEFAULT_PROFILES_FILE``), the profile with LARGE_DATA, the profile in one of the two
processes only, and the profile with other shared-memory segment sizes. Each runs under both
``ROS_AUTOMATIC_DISCOVERY_RANGE`` values, LOCALHOST and SUBNET (``--range``): with LOCALHOST the
ROS middleware replaces Fast DDS's builtin transports with its own (shared memory with the
default segment, and UDPv4). ``--env NAME=VALUE`` measures a configuration of one's own
(``camera:NAME=VALUE`` for one side only). The result is printed and saved as
``<output>/qos-large-images-<date>[-<tag>].json`` with the load average.
"""

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

SETTLE_S = 2.0      # after the first match, before the first counted frame
MATCH_S = 60.0      # discovery deadline
DRAIN_S = 3.0       # after the last frame, before the subscriber stops counting
NODE_STARTUP_S = 180.0  # a loaded 2-core machine imports torch and rclpy slowly
ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / 'config' / 'fastdds_large_images.xml'
SEGMENT_RE = re.compile(r'<segment_size>\d+</segment_size>')
SEGMENT_MIB = (1, 8, 16)  # shared-memory segment sizes tried besides the profile's own
RANGES = ('LOCALHOST', 'SUBNET')
FASTDDS_VARS = ('FASTDDS_BUILTIN_TRANSPORTS', 'FASTDDS_DEFAULT_PROFILES_FILE',
                'RMW_FASTRTPS_USE_QOS_FROM_XML', 'SKIP_DEFAULT_XML_FILE')


def configurations(profile: Path, tmp: Path) -> Dict[str, Dict[str, str]]:
    """Return the Fast DDS environment of each named configuration (variants written to tmp)."""
    table = {
        'default': {},
        'large_data': {'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA'},
        'large_data_1mb': {'FASTDDS_BUILTIN_TRANSPORTS':
                           'LARGE_DATA?max_msg_size=1MB&sockets_size=1MB'},
        'udp_4mb': {'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4?sockets_size=4MB'},
        'profile': {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)},
        'profile+large_data': {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile),
                               'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA'},
        'profile_camera_only': {'camera:FASTDDS_DEFAULT_PROFILES_FILE': str(profile)},
        'profile_subscriber_only': {'subscriber:FASTDDS_DEFAULT_PROFILES_FILE': str(profile)},
    }
    text = profile.read_text()
    if SEGMENT_RE.search(text):
        for mib in SEGMENT_MIB:
            variant = tmp / f'profile_shm_{mib}mb.xml'
            variant.write_text(SEGMENT_RE.sub(f'<segment_size>{mib << 20}</segment_size>', text))
            table[f'profile_shm_{mib}mb'] = {'FASTDDS_DEFAULT_PROFILES_FILE': str(variant)}
    return table


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``WxH`` into (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size {text!r}: expected WxH, e.g. 2048x1024') from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f'size {text!r}: width and height must be positive')
    return w, h


# --- the two processes ------------------------------------------------------------------------

def _qos(depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def run_subscriber(args: argparse.Namespace) -> int:
    """Count best-effort frames on ``args.topic`` until ``args.stop_file`` exists; print JSON."""
    import rclpy
    from rclpy.time import Time
    from sensor_msgs.msg import Image

    rclpy.init(args=[])
    node = rclpy.create_node('qos_bench_subscriber')
    seen: List[int] = []
    latencies: List[float] = []
    sizes = set()

    def on_image(msg: Image) -> None:
        now = node.get_clock().now()
        seen.append(int(msg.header.frame_id))
        latencies.append((now - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9)
        sizes.add(len(msg.data))

    node.create_subscription(Image, args.topic, on_image, _qos(args.depth))
    print('ready', flush=True)
    try:
        while not os.path.exists(args.stop_file):
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    latencies.sort()
    result = {'received': len(set(seen)), 'duplicates': len(seen) - len(set(seen)),
              'bytes': sorted(sizes),
              'latency_median_ms': (round(latencies[len(latencies) // 2] * 1e3, 1)
                                    if latencies else None)}
    print(json.dumps(result), flush=True)
    return 0


def run_node_subscriber(args: argparse.Namespace) -> int:
    """
    Run segmentation_node (its default input QoS) on ``args.topic`` and report its counts.

    This process subscribes to the node's labels, so the node segments as it would for RViz;
    ``received`` is the node's own ``frames_received`` from /diagnostics once the stop file
    exists (frames that reached its subscription callback, segmented or replaced by newer ones).
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    exe = Path(sys.executable).with_name('segmentation_node')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'seg_perception.node']
    cmd += ['--ros-args', '-r', f'image:={args.topic}', '-p', f'device:={args.node_device}',
            '-p', 'log_period:=0.0']
    log = tempfile.NamedTemporaryFile(prefix='qos_bench_node_', suffix='.log', delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init(args=[])
    node = rclpy.create_node('qos_bench_probe')
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    tables: List[str] = []
    labels: List[int] = []
    status: Dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name.endswith(f'camera {node.resolve_topic_name(args.topic)}'):
                status.clear()
                status.update({kv.key: kv.value for kv in st.values})

    node.create_subscription(String, 'segmentation/class_table', tables.append, latched)
    node.create_subscription(Image, 'segmentation/labels',
                             lambda m: labels.append(int(m.header.frame_id)), reliable)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, reliable)
    result: Dict[str, object] = {'received': 0}
    try:
        deadline = time.monotonic() + NODE_STARTUP_S
        while not tables:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('segmentation_node did not start:\n'
                                   + Path(log.name).read_text(errors='replace')[-3000:])
            rclpy.spin_once(node, timeout_sec=0.1)
        print('ready', flush=True)
        while not os.path.exists(args.stop_file):
            rclpy.spin_once(node, timeout_sec=0.1)
        status.clear()
        deadline = time.monotonic() + 10.0
        while not status and time.monotonic() < deadline:  # a /diagnostics after the stop
            rclpy.spin_once(node, timeout_sec=0.1)
        if not status:
            raise RuntimeError('no /diagnostics from segmentation_node after the last frame')
        result.update(received=int(status.get('frames_received', 0)),
                      processed=int(status.get('frames_processed', 0)),
                      dropped_overwritten=int(status.get('dropped_overwritten', 0)),
                      labels_received=len(set(labels)))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        os.unlink(log.name)
    print(json.dumps(result), flush=True)
    return 0


def run_camera(args: argparse.Namespace) -> int:
    """Publish ``args.frames`` frames at ``args.rate`` Hz once a subscriber matched; print JSON."""
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init(args=[])
    node = rclpy.create_node('qos_bench_camera')
    pub = node.create_publisher(Image, args.topic, _qos(5))
    w, h = args.size
    data = np.random.default_rng(0).integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()
    result: Dict[str, object] = {'sent': 0}
    try:
        deadline = time.monotonic() + MATCH_S
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                result['error'] = f'no subscriber matched within {MATCH_S:.0f} s'
                print(json.dumps(result), flush=True)
                return 1
            rclpy.spin_once(node, timeout_sec=0.1)
        settle = time.monotonic() + SETTLE_S
        while time.monotonic() < settle:
            rclpy.spin_once(node, timeout_sec=0.1)
        period = 1.0 / args.rate
        start = time.monotonic()
        publish_s = []
        for i in range(args.frames):
            time.sleep(max(0.0, start + i * period - time.monotonic()))
            msg = Image(header=Header(stamp=node.get_clock().now().to_msg(), frame_id=str(i)),
                        height=h, width=w, encoding='rgb8', step=w * 3, data=data)
            t0 = time.perf_counter()
            pub.publish(msg)
            publish_s.append(time.perf_counter() - t0)
            result['sent'] = i + 1
        result['seconds'] = round(time.monotonic() - start, 2)
        result['publish_median_ms'] = round(sorted(publish_s)[len(publish_s) // 2] * 1e3, 1)
        print(json.dumps(result), flush=True)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# --- the orchestrator -------------------------------------------------------------------------

def _environment(extra: Dict[str, str], role: str) -> Dict[str, str]:
    """Return this environment without Fast DDS settings, plus ``extra`` for ``role``."""
    env = {k: v for k, v in os.environ.items() if k not in FASTDDS_VARS}
    for key, value in extra.items():
        scope, _, name = key.rpartition(':')  # 'camera:NAME' / 'subscriber:NAME': one side only
        if scope in ('', role):
            env[name] = value
    env['PYTHONUNBUFFERED'] = '1'
    return env


def _shown(value: str) -> str:
    """Return ``value`` with a path in this repository relative, a temporary one as its name."""
    if value.startswith(str(ROOT) + os.sep):
        return os.path.relpath(value, ROOT)
    if value.startswith(tempfile.gettempdir() + os.sep):
        return '<tmp>/' + Path(value).name
    return value


def _text(output) -> str:
    return output.decode(errors='replace') if isinstance(output, bytes) else (output or '')


def _last_json(text: str) -> Optional[Dict]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    return None


def measure(name: str, extra_env: Dict[str, str], args: argparse.Namespace) -> Dict:
    """Run one subscriber and one camera process with ``extra_env``; return the counts."""
    sub_env, cam_env = _environment(extra_env, 'subscriber'), _environment(extra_env, 'camera')
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ['--topic', args.topic, '--size', f'{args.size[0]}x{args.size[1]}']
    with tempfile.TemporaryDirectory(prefix='qos_bench_') as tmp:
        stop = Path(tmp) / 'stop'
        sub = subprocess.Popen(me + ['--role', 'subscriber', '--stop-file', str(stop),
                                     '--depth', str(args.depth), '--subscriber', args.subscriber,
                                     '--node-device', args.node_device] + common,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=sub_env,
                               text=True, start_new_session=True)  # its group: it and its node
        load_start = round(os.getloadavg()[0], 2)
        try:
            before = []
            for line in sub.stdout:  # Fast DDS may print before the subscriber is ready
                if line.strip() == 'ready':
                    break
                before.append(line)
            else:
                raise RuntimeError(f'{name}: subscriber did not start: {"".join(before)}')
            limit = MATCH_S + SETTLE_S + args.frames / args.rate + 60.0
            try:
                cam = subprocess.run(me + ['--role', 'camera', '--frames', str(args.frames),
                                           '--rate', str(args.rate)] + common,
                                     capture_output=True, text=True, env=cam_env, timeout=limit)
            except subprocess.TimeoutExpired as e:
                cam = subprocess.CompletedProcess(e.cmd, -9, _text(e.stdout), _text(e.stderr)
                                                  + f'\ncamera process killed after {limit:.0f} s')
            time.sleep(DRAIN_S)
            stop.touch()
            sub_out, _ = sub.communicate(timeout=60)
            sub_out = ''.join(before) + sub_out
        finally:
            if sub.poll() is None:
                stop.touch()
                try:
                    sub.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(sub.pid, signal.SIGKILL)
                    sub.wait()
    sent = _last_json(cam.stdout) or {'sent': 0, 'error': cam.stdout + cam.stderr}
    got = _last_json(sub_out) or {'received': 0, 'error': sub_out}
    shown = {k: _shown(v) for k, v in extra_env.items()}
    result = {'config': name, 'env': shown, 'sent': sent.get('sent', 0),
              'received': got.get('received', 0),
              'load_average_1m': [load_start, round(os.getloadavg()[0], 2)]}
    result['received_percent'] = (round(100.0 * result['received'] / result['sent'], 1)
                                  if result['sent'] else 0.0)
    for key in ('latency_median_ms', 'duplicates', 'processed', 'dropped_overwritten',
                'labels_received'):
        result[key] = got.get(key)
    for key in ('publish_median_ms', 'seconds', 'error'):
        if key in sent:
            result[key] = sent[key]
    if 'error' in got:
        result['subscriber_error'] = got['error'][-2000:]
    # anything else the processes printed: Fast DDS and rmw errors (a profile that fails to load)
    other = [line for text in (sub_out, cam.stdout, cam.stderr) for line in text.splitlines()
             if line.strip() and not line.startswith('{') and line.strip() != 'ready']
    if other:
        result['messages'] = other[-20:]
    return result


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (also of the camera and subscriber processes)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output', type=Path, default=Path('bench/results'),
                   help='folder for the JSON result (default: bench/results)')
    p.add_argument('--frames', type=int, default=80, help='frames per configuration')
    p.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz')
    p.add_argument('--size', type=parse_size, default=(2048, 1024), help='frame size WxH (rgb8)')
    p.add_argument('--depth', type=int, default=1,
                   help="subscriber's keep-last depth (the node's default input depth is 1)")
    p.add_argument('--config', action='append', default=None,
                   help='configuration to measure (repeatable; default: all)')
    p.add_argument('--profile', type=Path, default=PROFILE,
                   help='Fast DDS XML profile of the "profile" configuration')
    p.add_argument('--env', action='append', default=[], metavar='NAME=VALUE',
                   help='measure a configuration "custom" with these variables (repeatable)')
    p.add_argument('--range', action='append', choices=RANGES, default=None,
                   help='ROS_AUTOMATIC_DISCOVERY_RANGE to measure under (repeatable; default: '
                        'both)')
    p.add_argument('--repeat', type=int, default=1, help='runs per configuration')
    p.add_argument('--tag', default='', help='suffix of the result file name')
    p.add_argument('--topic', default='qos_bench/image', help='topic of the frames')
    p.add_argument('--subscriber', choices=('probe', 'node'), default='probe',
                   help='probe: a plain rclpy subscription (default); node: segmentation_node '
                        "with its default input QoS, counted by its frames_received")
    p.add_argument('--node-device', default='cpu', help="segmentation_node's device")
    p.add_argument('--role', choices=('camera', 'subscriber'), help=argparse.SUPPRESS)
    p.add_argument('--stop-file', help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one side (``--role``) or the whole measurement; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.role == 'camera':
        return run_camera(args)
    if args.role == 'subscriber':
        return run_node_subscriber(args) if args.subscriber == 'node' else run_subscriber(args)
    with tempfile.TemporaryDirectory(prefix='qos_profiles_') as tmp:
        return run_all(args, Path(tmp))


def run_all(args: argparse.Namespace, tmp: Path) -> int:
    """Measure every configuration under every discovery range; print and save the JSON."""
    table = configurations(args.profile.resolve(), tmp)
    if args.env:
        table['custom'] = dict(item.split('=', 1) for item in args.env)
    names = args.config or (['custom'] if args.env else list(table))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f'--config {", ".join(unknown)}: unknown; known: {", ".join(table)}')
    report = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              'host': platform.node(), 'cpus': os.cpu_count(),
              'frames': args.frames, 'rate_hz': args.rate,
              'size': f'{args.size[0]}x{args.size[1]} rgb8',
              'bytes': args.size[0] * args.size[1] * 3,
              'subscriber': args.subscriber, 'subscriber_depth': args.depth,
              'rmem_max': Path('/proc/sys/net/core/rmem_max').read_text().strip(),
              'results': []}
    for discovery_range in args.range or RANGES:
        for name in names:
            env = dict(table[name], ROS_AUTOMATIC_DISCOVERY_RANGE=discovery_range)
            for _ in range(args.repeat):
                r = measure(name, env, args)
                r['discovery_range'] = discovery_range
                report['results'].append(r)
                print(f'{discovery_range:9s} {name:20s} {r["received"]:4d} / {r["sent"]:4d} '
                      f'received ({r["received_percent"]:5.1f} %), latency p50 '
                      f'{r["latency_median_ms"]} ms, load {r["load_average_1m"]}', flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    path = args.output / f'qos-large-images-{day}{"-" + args.tag if args.tag else ""}.json'
    path.write_text(json.dumps(report, indent=2) + '\n')
    print(f'saved {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
