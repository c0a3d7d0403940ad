#!/usr/bin/env python3
"""
Benchmark ERFNet inference: the network, the pipeline, and segmentation_node end to end.

    python bench/bench_inference.py --output bench/results [--quick] [--device auto|cpu|cuda]

Three parts, each timed after warm-up iterations that are not counted:

* ``forward``: the network alone (random weights, 20 classes, batch 1) at 512x256 and 1024x512,
  fp32, and fp16/bf16 on CUDA;
* ``pipeline``: :class:`SegmentationPipeline` on 2048x1024 rgb8 frames (upload, resize,
  normalise, network, argmax, labels back at 2048x1024, colours, overlay, results to the host);
* ``node``: a camera process publishes 2048x1024 rgb8 ``image`` messages at ``--rate`` Hz to a
  ``segmentation_node`` process (network input 1024x512), and this process subscribes to its
  labels, colour and overlay outputs: output rate, and latency from the header stamp to the
  receipt of the labels. The node keeps only the newest frame, so frames it cannot keep up with
  are dropped, as on a car. Its input runs reliable here (``--node-reliability``): over Fast DDS
  on these machines a best-effort subscription received almost none of the multi-megabyte
  frames (about 1 in 100 at 2048x1024; small frames arrive), so best effort measures nothing.

Medians and percentiles are printed and saved with the device, library versions, CPU model and
ROS middleware as ``<output>/<device>-<date>.json``.
"""

# First, as in the node: the package sets OpenMP's wait policy before torch loads (spinning
# OpenMP waits slow a shared CPU down several times).
import seg_perception  # noqa: F401, I100

import argparse
import datetime
import importlib.metadata
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
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from seg_perception.engines import ACCELERATIONS
from seg_perception.pipeline import Frame, Outputs, PRECISIONS, SegmentationPipeline
from seg_training.checkpoint import build_model, ModelInfo, save_model
from seg_training.classes import cityscapes_table
from seg_training.cli import resolve_device

CAMERA_SIZE = (2048, 1024)  # (W, H) of the frames sent through the pipeline and the node
NODE_INPUT_SIZE = (1024, 512)
FORWARD_SIZES = ((512, 256), (1024, 512))
NODE_STARTUP_S = 180.0  # a loaded 2-core machine imports torch and rclpy slowly
OUTPUTS = ('labels', 'color', 'overlay')


def summarize(seconds: Sequence[float]) -> Dict[str, float]:
    """Return median, p90, p99, mean, min and max in ms, and the rate the median allows."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return {'n': int(ms.size), 'median_ms': round(median, 2),
            'p90_ms': round(float(np.percentile(ms, 90)), 2),
            'p99_ms': round(float(np.percentile(ms, 99)), 2),
            'mean_ms': round(float(ms.mean()), 2), 'min_ms': round(float(ms.min()), 2),
            'max_ms': round(float(ms.max()), 2), 'fps': round(1e3 / median, 2)}


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iterations: int,
               desc: str) -> Dict[str, float]:
    """Time ``fn`` ``iterations`` times after ``warmup`` uncounted calls."""
    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in tqdm(range(iterations), desc=desc, unit='it', leave=False):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return summarize(times)


def camera_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Make an (H, W, 3) uint8 RGB test frame: smooth colour regions with noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-12, 13, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def model_info(input_size=NODE_INPUT_SIZE) -> ModelInfo:
    """Describe the benchmarked model: the official layout (19 classes + void)."""
    return ModelInfo(classes=cityscapes_table(with_void=True), input_size=input_size)


def precisions_for(device: torch.device) -> List[str]:
    """fp32 everywhere; the half types where they are fast (CUDA)."""
    return ['fp32', 'fp16', 'bf16'] if device.type == 'cuda' else ['fp32']


def bench_forward(device: torch.device, warmup: int, iterations: int) -> List[Dict]:
    """Time the network alone at each size and precision."""
    results = []
    for precision in precisions_for(device):
        dtype = PRECISIONS[precision]
        torch.manual_seed(0)
        model = build_model(model_info()).eval().to(device, dtype=dtype)
        if device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
            model = model.to(memory_format=torch.channels_last)
        for w, h in FORWARD_SIZES:
            x = torch.rand(1, 3, h, w, device=device).to(dtype)
            if device.type == 'cuda':
                x = x.contiguous(memory_format=torch.channels_last)

            def forward() -> torch.Tensor:
                with torch.inference_mode():
                    return model(x)

            stats = time_calls(forward, device, warmup, iterations,
                               f'forward {w}x{h} {precision}')
            results.append({'input': f'{w}x{h}', 'precision': precision, **stats})
    return results


def bench_pipeline(device: torch.device, warmup: int, iterations: int,
                   accelerate: str = 'auto') -> List[Dict]:
    """Time the pipeline on camera-size rgb8 frames, with all outputs and labels only."""
    frame = Frame(camera_image(*CAMERA_SIZE), 'rgb8')
    results = []
    for precision in precisions_for(device):
        torch.manual_seed(0)
        pipe = SegmentationPipeline(build_model(model_info()), model_info(), device=str(device),
                                    precision=precision, warmup=True, accelerate=accelerate)
        for name, outputs in (('labels+color+overlay', Outputs()),
                              ('labels', Outputs(color=False, overlay=False))):
            stats = time_calls(lambda: pipe([frame], outputs), device, warmup, iterations,
                               f'pipeline {name} {precision}')
            results.append({'frame': '{}x{} rgb8'.format(*CAMERA_SIZE),
                            'network_input': '{}x{}'.format(*pipe.input_size),
                            'precision': precision, 'outputs': name,
                            'engine': pipe.engine.describe(), **stats})
    return results


def camera_prefixes(cameras: int) -> List[str]:
    """Return the topic prefix of each camera: '' for one, 'cam0/', 'cam1/', ... for more."""
    return [''] if cameras <= 1 else [f'cam{i}/' for i in range(cameras)]


def ros_environment() -> Dict[str, str]:
    """Isolate the benchmark's DDS traffic: this machine only, a domain of its own."""
    env = dict(os.environ)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    env.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
    return env


def run_camera(args: argparse.Namespace) -> int:
    """Publish camera frames on ``image`` until the duration ends (the camera process)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from seg_perception.ros_image import image_msg

    rclpy.init()
    node = rclpy.create_node('bench_camera')
    try:
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pubs = [node.create_publisher(Image, f'{prefix}image', qos)
                for prefix in camera_prefixes(args.cameras)]
        msg = image_msg(Header(frame_id='bench_camera'), camera_image(args.width, args.height),
                        'rgb8')
        deadline = time.monotonic() + 60.0
        while any(pub.get_subscription_count() == 0 for pub in pubs):
            if time.monotonic() > deadline:
                node.get_logger().error('no subscriber on image within 60 s')
                return 3
            time.sleep(0.05)
        sent, period = 0, 1.0 / args.rate
        start = next_time = time.monotonic()
        while time.monotonic() - start < args.duration:
            msg.header.stamp = node.get_clock().now().to_msg()
            for pub in pubs:  # all cameras at once, as with synchronised cameras
                pub.publish(msg)
                sent += 1
            next_time += period
            delay = next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_time = time.monotonic()  # behind: do not burst to catch up
        print(json.dumps({'sent': sent, 'seconds': round(time.monotonic() - start, 3)}))
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> Optional[int]:
    """SIGINT a process we started, wait, and kill it if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def bench_node(device: torch.device, precision: str, rate: float, duration: float,
               reliability: str, warmup_frames: int, workdir: Path, cameras: int = 1,
               accelerate: str = 'auto') -> Dict:
    """Camera process -> segmentation_node process -> this process, on a real DDS graph."""
    env = ros_environment()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
                                           'FASTDDS_BUILTIN_TRANSPORTS')})
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    torch.manual_seed(0)
    model_path = workdir / 'bench_model.pt'
    save_model(build_model(model_info()), model_info(), model_path)
    node_exe = Path(sys.executable).with_name('segmentation_node')
    if node_exe.exists():
        node_cmd = [str(node_exe)]
    else:
        node_cmd = [sys.executable, '-m', 'seg_perception.node']
    node_cmd += ['--ros-args', '-p', f'model:={model_path}', '-p', f'device:={device}',
                 '-p', f'precision:={precision}', '-p', f'reliability:={reliability}',
                 '-p', f'accelerate:={accelerate}']
    prefixes = camera_prefixes(cameras)
    if cameras > 1:
        node_cmd += ['-p', 'cameras:=[%s]' % ', '.join(p.rstrip('/') for p in prefixes)]
    node_log_path = workdir / 'node.log'
    received: Dict[str, List[tuple]] = {name: [] for name in OUTPUTS}

    rclpy.init()
    probe = rclpy.create_node('bench_probe')
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for name in OUTPUTS:
        def on_output(msg: Image, name: str = name) -> None:
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            received[name].append((time.time_ns(), stamp_ns))

        for prefix in prefixes:
            probe.create_subscription(Image, f'{prefix}segmentation/{name}', on_output, qos)
    node_log = open(node_log_path, 'wb')
    node = subprocess.Popen(node_cmd, stdout=node_log, stderr=subprocess.STDOUT,
                            env=dict(env, PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0'))
    camera = None
    try:
        deadline = time.monotonic() + NODE_STARTUP_S
        while not all(probe.count_subscribers(f'{p}image') > 0 and all(
                probe.count_publishers(f'{p}segmentation/{n}') > 0 for n in OUTPUTS)
                for p in prefixes):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('segmentation_node did not come up:\n'
                                   + node_log_path.read_text(errors='replace')[-3000:])
            executor.spin_once(timeout_sec=0.1)
        camera = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), '--camera', '--rate', str(rate),
             '--duration', str(duration), '--width', str(CAMERA_SIZE[0]),
             '--height', str(CAMERA_SIZE[1]), '--cameras', str(cameras)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        end = time.monotonic() + duration + 120.0
        with tqdm(total=round(duration), desc=f'node {precision}', unit='s', leave=False) as bar:
            started = time.monotonic()
            while camera.poll() is None and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
                elapsed = min(int(time.monotonic() - started), bar.total)
                if elapsed > bar.n:
                    bar.update(elapsed - bar.n)
        camera_out, camera_err = camera.communicate(timeout=30)
        if camera.returncode != 0:
            raise RuntimeError(f'camera process failed ({camera.returncode}): {camera_err}')
        # Frames still in flight when the camera stopped: wait until the outputs go quiet.
        quiet_until = time.monotonic() + 5.0
        last = len(received['labels'])
        while time.monotonic() < quiet_until:
            executor.spin_once(timeout_sec=0.1)
            if len(received['labels']) != last:
                last = len(received['labels'])
                quiet_until = time.monotonic() + 5.0
    finally:
        if camera is not None and camera.poll() is None:
            _stop(camera)
        node_rc = _stop(node)
        node_log.close()
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown()

    sent = json.loads(camera_out.strip().splitlines()[-1])['sent']
    labels = received['labels'][warmup_frames:]
    if len(labels) < 2:
        raise RuntimeError(f'only {len(received["labels"])} labels received from {sent} frames; '
                           'segmentation_node log:\n'
                           + node_log_path.read_text(errors='replace')[-3000:])
    latencies = [(recv - stamp) / 1e9 for recv, stamp in labels]
    span = (labels[-1][0] - labels[0][0]) / 1e9
    stats = summarize(latencies)
    stats.pop('fps')  # the rate is measured from arrivals, not from the latency
    return {'frame': '{}x{} rgb8'.format(*CAMERA_SIZE),
            'network_input': '{}x{}'.format(*NODE_INPUT_SIZE), 'precision': precision,
            'accelerate': accelerate, 'cameras': cameras,
            'node_input_reliability': reliability, 'camera_rate_hz': rate,
            'duration_s': duration, 'frames_sent': sent,
            'outputs_received': {n: len(v) for n, v in received.items()},
            'warmup_outputs_excluded': warmup_frames,
            'output_fps': round((len(labels) - 1) / span, 3) if span > 0 else None,
            'latency_stamp_to_labels': stats,
            'node_exit_code': node_rc,
            'node_log_tail': node_log_path.read_text(errors='replace').splitlines()[-5:]}


def cpu_model() -> str:
    """Return the processor's model name from /proc/cpuinfo (or platform as a fallback)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> Dict:
    """Describe where the numbers were taken: device, versions, CPU and ROS middleware."""
    from rclpy.utilities import get_rmw_implementation_identifier

    info = {
        'device': str(device),
        'device_name': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                        else cpu_model()),
        'cpu_model': cpu_model(), 'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
        'load_average_1m_at_start': round(os.getloadavg()[0], 2),
        'python': platform.python_version(), 'torch': torch.__version__,
        'numpy': np.__version__, 'opencv': cv2.__version__, 'platform': platform.platform(),
        'ros': {'distro': os.environ.get('ROS_DISTRO'),
                'source': 'ROS install' if os.environ.get('ROS_DISTRO') else 'PyPI wheels',
                'rclpy': package_version('rclpy'), 'fastdds': package_version('ros-fastdds'),
                'rmw': get_rmw_implementation_identifier(),
                'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA'},
    }
    if device.type == 'cuda':
        info['cuda'] = torch.version.cuda
        info['cudnn'] = torch.backends.cudnn.version()
    return info


def result_path(output: Path, env: Dict, quick: bool) -> Path:
    """Return ``<output>/<device>-<date>[-quick].json``, device as a lowercase slug."""
    kind = 'cpu-' if env['device'] == 'cpu' else ''
    slug = re.sub(r'[^a-z0-9]+', '-', (kind + env['device_name']).lower()).strip('-')
    date = datetime.date.today().isoformat()
    return output / f'{slug}-{date}{"-quick" if quick else ""}.json'


def print_summary(report: Dict) -> None:
    env = report['environment']
    print(f'device {env["device_name"]} ({env["device"]}), torch {env["torch"]}, '
          f'python {env["python"]}')
    for r in report['forward']:
        print(f'forward  {r["input"]:>9} {r["precision"]}: median {r["median_ms"]:8.1f} ms  '
              f'p90 {r["p90_ms"]:8.1f}  p99 {r["p99_ms"]:8.1f}  ({r["fps"]:.1f} fps)')
    for r in report['pipeline']:
        print(f'pipeline {r["frame"]} -> {r["network_input"]} {r["precision"]} '
              f'[{r["outputs"]}]: median {r["median_ms"]:.1f} ms  p90 {r["p90_ms"]:.1f}  '
              f'p99 {r["p99_ms"]:.1f}  ({r["fps"]:.1f} fps)')
    for r in report.get('node', []):
        lat = r['latency_stamp_to_labels']
        print(f'node     {r["frame"]} @ {r["camera_rate_hz"]} Hz {r["precision"]}: '
              f'{r["output_fps"]} fps out, latency p50 {lat["median_ms"]:.1f} ms  '
              f'p90 {lat["p90_ms"]:.1f}  p99 {lat["p99_ms"]:.1f}  '
              f'({r["outputs_received"]["labels"]} labels from {r["frames_sent"]} frames)')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--output', type=Path, default=Path('bench/results'),
                        help='folder for the JSON result (default bench/results)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--quick', action='store_true', help='few iterations: a smoke run')
    parser.add_argument('--iterations', type=int, help='timed iterations per measurement')
    parser.add_argument('--warmup', type=int, help='uncounted iterations before timing')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz (node)')
    parser.add_argument('--duration', type=float, help='seconds the camera publishes (node)')
    parser.add_argument('--node-reliability', default='reliable',
                        choices=('reliable', 'best_effort'),
                        help="the node's input QoS reliability (default reliable)")
    parser.add_argument('--skip-node', action='store_true', help='leave out the node part')
    parser.add_argument('--accelerate', default='auto', choices=ACCELERATIONS,
                        help='engine of the pipeline and node parts (default auto)')
    parser.add_argument('--cameras', type=int, default=1,
                        help='node part: cameras published at once, segmented in batches by '
                        'one node (default 1)')
    # The camera process of the node benchmark runs this script with --camera.
    parser.add_argument('--camera', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--width', type=int, default=CAMERA_SIZE[0], help=argparse.SUPPRESS)
    parser.add_argument('--height', type=int, default=CAMERA_SIZE[1], help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.camera:
        return run_camera(args)
    device = resolve_device(args.device)
    cuda = device.type == 'cuda'
    iterations = args.iterations or (5 if args.quick else (100 if cuda else 20))
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    duration = args.duration or (15.0 if args.quick else 60.0)
    env = environment(device)
    report = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'quick': args.quick, 'iterations': iterations, 'warmup_iterations': warmup,
              'environment': env}
    report['forward'] = bench_forward(device, warmup, iterations)
    report['pipeline'] = bench_pipeline(device, warmup, iterations, args.accelerate)
    if not args.skip_node:
        with tempfile.TemporaryDirectory(prefix='seg_bench_') as tmp:
            report['node'] = [bench_node(device, p, args.rate, duration, args.node_reliability,
                                         warmup_frames=1 if args.quick else 2,
                                         workdir=Path(tmp), cameras=args.cameras,
                                         accelerate=args.accelerate)
                              for p in (['fp32', 'fp16'] if cuda else ['fp32'])]
    # Other work on the machine slows everything down: say how busy it was.
    env['load_average_1m_at_end'] = round(os.getloadavg()[0], 2)
    path = result_path(args.output, env, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + '\n')
    print_summary(report)
    print(f'saved {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
