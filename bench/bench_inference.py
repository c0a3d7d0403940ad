#!/usr/bin/env python3
"""
Benchmark ERFNet inference: the network, the pipeline stage by stage, and the node end to end.

    python bench/bench_inference.py --output bench/results [--quick] [--device auto|cpu|cuda]

Every part runs the same model (default: the default model, ``models/espnetv2_cityscapes.pt``,
at its own 1024x512 input; ``--model`` for another) on 2048x1024 rgb8 frames, timed after
uncounted warm-up:

* ``forward``: the bare torch-eager forward of that model at its input size (the reference the
  ratios divide by), and a random-weight 20-class ERFNet at 512x256 and 1024x512;
* ``pipeline``: :class:`SegmentationPipeline`, all three outputs and labels only, end to end and
  per stage (upload, resize, forward, labels = logits upsampling and argmax, color, overlay,
  download; and the node's decode of the received bytes before and message = serialized Image
  bytes of every output after, which the end-to-end figure leaves out);
* ``label_upsampling`` (CPU): the pipeline with each label upsampling mode;
* ``node``: a camera process publishes ``image`` at ``--rate`` Hz (serialized once per frame
  after stamping, as a C++ driver would, without rclpy's Python conversion) to a
  ``segmentation_node``
  process (``stage_timing:=true``), this process subscribes to labels, colour and overlay (raw:
  timed on receipt of the bytes, before rclpy would convert them to Python): latency from the
  header stamp to the receipt of the labels (and of the last of the three outputs:
  bench_wire.py sets it against the bare transport of the same bytes), the node's own stage
  times from /diagnostics
  (input = stamp to the worker taking the frame: camera serialization, transport, reading,
  queue; message, publish; transport out = end to end minus stamp to labels sent), and the
  ratio to the node's own forward stage (same frames, same load). Input QoS reliable
  (``--node-reliability``): over Fast DDS on these machines a best-effort subscription received
  almost none of the multi-megabyte frames;
* ``ratios``: pipeline and node p50 over the forward p50 (acceptance: <= 1.3 and <= 2.0 on CPU);
  the pipeline also against the forward timed in the same iterations, the figure least moved by
  other work on the machine.

``--accelerate`` picks the engine of the pipeline and node parts, ``--cameras N`` runs the node
with N cameras published at once, ``--input-size`` sets the network input (default: the model's
own on the CPU, 1024x512 on CUDA). Medians and percentiles are printed and saved with the
device, library versions, CPU model, load and ROS middleware as ``<output>/<device>-<date>.json``.
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
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from seg_perception.engines import ACCELERATIONS
from seg_perception.pipeline import Frame, Outputs, PRECISIONS, SegmentationPipeline
from seg_perception.postprocess import LABEL_UPSAMPLING
from seg_perception.resources import default_model_path
from seg_perception.timing import StageTimer
from seg_training.base.classes import cityscapes_table
from seg_training.base.cli import resolve_device
from seg_training.nets.checkpoint import build_model, load_model, ModelInfo

CAMERA_SIZE = (2048, 1024)  # (W, H) of the frames sent through the pipeline and the node
FORWARD_SIZES = ((512, 256), (1024, 512))
NODE_STARTUP_S = 180.0  # a loaded 2-core machine imports torch and rclpy slowly
OUTPUTS = ('labels', 'color', 'overlay')
# Acceptance on the CPU: p50 over the bare eager forward of the same model at the same size.
TARGET_RATIOS = {'pipeline': 1.3, 'node': 2.0}


def summarize(seconds: Sequence[float], digits: int = 2) -> Dict[str, float]:
    """Return median, p90, p99, mean, min and max in ms, and the rate the median allows."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return {'n': int(ms.size), 'median_ms': round(median, digits),
            'p90_ms': round(float(np.percentile(ms, 90)), digits),
            'p99_ms': round(float(np.percentile(ms, 99)), digits),
            'mean_ms': round(float(ms.mean()), digits),
            'min_ms': round(float(ms.min()), digits),
            'max_ms': round(float(ms.max()), digits), 'fps': round(1e3 / median, 2)}


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


def model_info(input_size=(1024, 512)) -> ModelInfo:
    """Describe the random-weight network of the size sweep: the official layout (20 classes)."""
    return ModelInfo(classes=cityscapes_table(with_void=True), input_size=input_size)


def percentiles(seconds: Sequence[float]) -> Dict[str, float]:
    """Return p50 and p99 in ms (the stage tables' columns)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {'p50_ms': round(float(np.median(ms)), 3),
            'p99_ms': round(float(np.percentile(ms, 99)), 3)}


def precisions_for(device: torch.device) -> List[str]:
    """fp32 everywhere; the half types where they are fast (CUDA)."""
    return ['fp32', 'fp16', 'bf16'] if device.type == 'cuda' else ['fp32']


def reference_forward(model_path: Path, device: torch.device,
                      input_size: Optional[Tuple[int, int]] = None) -> Callable[[], None]:
    """Return the bare torch-eager fp32 forward of the benchmarked model at its input size."""
    model, info = load_model(model_path)
    model = model.eval().to(device)
    w, h = input_size or info.input_size
    x = torch.rand(1, 3, h, w, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    return forward


def bench_reference(model_path: Path, device: torch.device, warmup: int, iterations: int,
                    input_size: Optional[Tuple[int, int]] = None) -> Dict:
    """Time the bare torch-eager fp32 forward of the benchmarked model at its input size."""
    w, h = input_size or load_model(model_path)[1].input_size
    stats = time_calls(reference_forward(model_path, device, input_size), device, warmup,
                       iterations, f'reference forward {w}x{h}')
    return {'model': str(model_path), 'input': f'{w}x{h}', 'precision': 'fp32',
            'engine': 'torch eager', **stats}


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


def time_pipeline(pipe: SegmentationPipeline, msg: bytes, outputs: Outputs,
                  warmup: int, iterations: int, desc: str,
                  reference: Optional[Callable[[], None]] = None,
                  output_scale: float = 1.0) -> Dict:
    """
    Time the pipeline call end to end and per stage, plus two node stages around it.

    The node stages are the message decode before the call and the serialization of its
    outputs after it; they are not part of the end-to-end figure.

    With ``reference`` (the bare forward), each iteration also times it, so the ratio of the
    two medians is taken under the same load.
    """
    from std_msgs.msg import Header

    from seg_perception.ros_image import frame_from_serialized, serialized_image

    timer = StageTimer(pipe.device)
    cuda = pipe.device.type == 'cuda'
    header = Header(frame_id='bench')
    total, ref = [], []
    for i in tqdm(range(warmup + iterations), desc=desc, unit='it', leave=False):
        if reference is not None:
            t0 = time.perf_counter()
            reference()
            ref.append(time.perf_counter() - t0)
        with timer('decode'):
            frame = frame_from_serialized(msg)[1]
        t0 = time.perf_counter()
        (res,) = pipe([frame], outputs, output_scale=output_scale, timer=timer)
        if cuda:  # the stage timer synchronises at each stage: time the total without it
            t0 = time.perf_counter()
            # ends with the one synchronised download
            (res,) = pipe([frame], outputs, output_scale=output_scale)
        total.append(time.perf_counter() - t0)
        with timer('message'):
            if res.labels is not None:
                serialized_image(header, res.labels, 'mono8')
            if res.color is not None:
                serialized_image(header, res.color, 'rgb8')
            if res.overlay is not None:
                serialized_image(header, res.overlay, res.overlay_encoding)
        if i < warmup:
            timer.current.clear()
        else:
            timer.next()
    stages = {name: {k: v[k] for k in ('p50_ms', 'p99_ms')}
              for name, v in timer.summary().items()}
    out = {'end_to_end': summarize(total[warmup:]), 'stages': stages}
    if ref:
        forward = summarize(ref[warmup:])
        out['interleaved_reference_forward'] = forward
        out['ratio_to_interleaved_forward'] = round(
            out['end_to_end']['median_ms'] / forward['median_ms'], 2)
    return out


def bench_pipeline(model_path: Path, device: torch.device, warmup: int, iterations: int,
                   accelerate: str = 'auto',
                   input_size: Optional[Tuple[int, int]] = None) -> List[Dict]:
    """Time the pipeline on camera-size rgb8 frames, with all outputs and labels only."""
    from std_msgs.msg import Header

    from seg_perception.ros_image import serialized_image

    # What the node's raw subscription receives.
    msg = serialized_image(Header(frame_id='bench'), camera_image(*CAMERA_SIZE), 'rgb8')
    results = []
    for precision in precisions_for(device):
        model, info = load_model(model_path)
        pipe = SegmentationPipeline(model, info, device=str(device), precision=precision,
                                    input_size=input_size, warmup=True, accelerate=accelerate)
        for name, outputs in (('labels+color+overlay', Outputs()),
                              ('labels', Outputs(color=False, overlay=False))):
            ref = (reference_forward(model_path, device, input_size) if precision == 'fp32'
                   else None)
            timed = time_pipeline(pipe, msg, outputs, warmup, iterations,
                                  f'pipeline {name} {precision}', ref)
            extra = {k: timed[k] for k in ('interleaved_reference_forward',
                                           'ratio_to_interleaved_forward') if k in timed}
            results.append({'frame': '{}x{} rgb8'.format(*CAMERA_SIZE),
                            'network_input': '{}x{}'.format(*pipe.input_size),
                            'precision': precision, 'outputs': name,
                            'label_upsampling': pipe.label_upsampling,
                            'engine': pipe.engine.describe(),
                            **timed['end_to_end'], 'stages': timed['stages'], **extra})
    return results


def bench_label_upsampling(model_path: Path, device: torch.device, warmup: int, iterations: int,
                           input_size: Optional[Tuple[int, int]] = None,
                           accelerate: str = 'auto') -> List[Dict]:
    """Time the pipeline (all outputs) with each label upsampling mode."""
    frame = Frame(camera_image(*CAMERA_SIZE), 'rgb8')
    results = []
    for mode in LABEL_UPSAMPLING[1:]:  # every mode but auto
        model, info = load_model(model_path)
        pipe = SegmentationPipeline(model, info, device=str(device), warmup=False,
                                    input_size=input_size, label_upsampling=mode,
                                    accelerate=accelerate)
        timer = StageTimer(pipe.device)

        def run() -> None:
            pipe([frame], timer=timer)
            timer.next()

        # The camera-size argmax on the CPU is slow: fewer iterations there.
        n = max(3, iterations // 4) if mode == 'bilinear' and device.type != 'cuda' else \
            iterations
        stats = time_calls(run, device, min(warmup, 2), n, f'labels {mode}')
        labels = [r['labels'] * 1e3 for r in timer.records[-n:]]
        results.append({'label_upsampling': mode, **stats,
                        'labels_stage_p50_ms': round(float(np.median(labels)), 2)})
    return results


# The project's Fast DDS profile for large frames (README "Large frames and best effort"): with
# ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, LARGE_DATA alone leaves a 512 KiB shared-memory segment.
LARGE_IMAGES_PROFILE = Path(__file__).resolve().parents[1] / 'config' / 'fastdds_large_images.xml'


def ros_environment() -> Dict[str, str]:
    """Isolate the benchmark's DDS traffic: this machine only, a domain of its own."""
    env = dict(os.environ)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    if LARGE_IMAGES_PROFILE.exists():
        env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(LARGE_IMAGES_PROFILE))
    env.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
    return env


def camera_prefixes(cameras: int) -> List[str]:
    """Return the topic prefix of each camera: '' for one, 'cam0/', 'cam1/', ... for more."""
    return [''] if cameras <= 1 else [f'cam{i}/' for i in range(cameras)]


def run_camera(args: argparse.Namespace) -> int:
    """Publish camera frames on ``image`` until the duration ends (the camera process)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from seg_perception.ros_image import serialized_image

    rclpy.init()
    node = rclpy.create_node('bench_camera')
    try:
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pubs = [node.create_publisher(Image, f'{prefix}image', qos)
                for prefix in camera_prefixes(args.cameras)]
        # Serialized per frame after stamping (one copy), as a C++ driver publishes without
        # rclpy's conversion of a Python message (~10-20 ms per 6 MB here).
        header = Header(frame_id='bench_camera')
        pixels = camera_image(args.width, args.height)
        deadline = time.monotonic() + 60.0
        while any(pub.get_subscription_count() == 0 for pub in pubs):
            if time.monotonic() > deadline:
                node.get_logger().error('no subscriber on image within 60 s')
                return 3
            time.sleep(0.05)
        sent, period = 0, 1.0 / args.rate
        start = next_time = time.monotonic()
        while time.monotonic() - start < args.duration:
            header.stamp = node.get_clock().now().to_msg()
            data = serialized_image(header, pixels, 'rgb8')
            for pub in pubs:  # all cameras at once, as with synchronised cameras
                pub.publish(data)
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


def node_command(model_path: Path, device: torch.device, precision: str, reliability: str,
                 cameras: int = 1, accelerate: str = 'auto',
                 input_size: Optional[Tuple[int, int]] = None,
                 output_scale: float = 1.0) -> List[str]:
    """Return the command line of the benchmarked ``segmentation_node`` (stage timing on)."""
    node_exe = Path(sys.executable).with_name('segmentation_node')
    if node_exe.exists():
        node_cmd = [str(node_exe)]
    else:
        node_cmd = [sys.executable, '-m', 'seg_perception.node']
    node_cmd += ['--ros-args', '-p', f'model:={model_path}', '-p', f'device:={device}',
                 '-p', f'precision:={precision}', '-p', f'reliability:={reliability}',
                 '-p', 'stage_timing:=true', '-p', 'diagnostics_period:=0.5',
                 '-p', f'accelerate:={accelerate}', '-p', f'output_scale:={output_scale}']
    if input_size:
        node_cmd += ['-p', f'input_width:={input_size[0]}', '-p',
                     f'input_height:={input_size[1]}']
    if cameras > 1:
        node_cmd += ['-p', 'cameras:=[%s]' % ', '.join(
            p.rstrip('/') for p in camera_prefixes(cameras))]
    return node_cmd


def run_graph(middle_cmd: Sequence[str], name: str, rate: float, duration: float,
              workdir: Path, cameras: int = 1, size: Tuple[int, int] = CAMERA_SIZE,
              middle_env: Optional[Dict[str, str]] = None) -> Dict:
    """
    Camera process -> ``middle_cmd`` process -> this process, on a real DDS graph.

    The middle process (the node, or a bare relay) subscribes to ``image`` and publishes the
    outputs; this process subscribes to them raw (timed on receipt of the bytes, before rclpy
    would convert them to Python). Returns the receipts per output as (receipt ns, stamp ns),
    the middle process's last /diagnostics pipeline values, frames sent, its exit code and log.
    ``middle_env`` adds variables to the middle process's environment only.
    """
    env = ros_environment()
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID',
                                           'FASTDDS_BUILTIN_TRANSPORTS',
                                           'FASTDDS_DEFAULT_PROFILES_FILE') if k in env})
    from diagnostic_msgs.msg import DiagnosticArray
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    prefixes = camera_prefixes(cameras)
    log_path = workdir / f'{name}.log'
    received: Dict[str, List[tuple]] = {out: [] for out in OUTPUTS}

    rclpy.init()
    probe = rclpy.create_node('bench_probe')
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for out in OUTPUTS:
        # Raw: the receipt is timed before any conversion to a Python message (which costs this
        # process ~10 ms per 6 MB, a cost of Python subscribers, not of the node).
        def on_output(data: bytes, out: str = out) -> None:
            now = time.time_ns()
            order = '<' if data[1] == 1 else '>'  # CDR encapsulation: byte order
            sec, nanosec = struct.unpack_from(order + 'iI', data, 4)  # header.stamp
            received[out].append((now, sec * 1_000_000_000 + nanosec))

        for prefix in prefixes:
            probe.create_subscription(Image, f'{prefix}segmentation/{out}', on_output, qos,
                                      raw=True)
    diagnostics: Dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(': pipeline'):
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})

    probe.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, qos)
    log = open(log_path, 'wb')
    middle = subprocess.Popen(list(middle_cmd), stdout=log, stderr=subprocess.STDOUT,
                              env=dict(env, **(middle_env or {}), PYTHONUNBUFFERED='1',
                                       RCUTILS_COLORIZED_OUTPUT='0'))
    camera = None
    try:
        deadline = time.monotonic() + NODE_STARTUP_S
        while not all(probe.count_subscribers(f'{p}image') > 0 and all(
                probe.count_publishers(f'{p}segmentation/{n}') > 0 for n in OUTPUTS)
                for p in prefixes):
            if middle.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'{name} did not come up:\n'
                                   + log_path.read_text(errors='replace')[-3000:])
            executor.spin_once(timeout_sec=0.1)
        camera = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), '--camera', '--rate', str(rate),
             '--duration', str(duration), '--width', str(size[0]),
             '--height', str(size[1]), '--cameras', str(cameras)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        end = time.monotonic() + duration + 120.0
        with tqdm(total=round(duration), desc=name, unit='s', leave=False) as bar:
            started = time.monotonic()
            while camera.poll() is None and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
                elapsed = min(int(time.monotonic() - started), bar.total)
                if elapsed > bar.n:
                    bar.update(elapsed - bar.n)
        camera_out, camera_err = camera.communicate(timeout=30)
        if camera.returncode != 0:
            raise RuntimeError(f'camera process failed ({camera.returncode}): {camera_err}')
        # Frames still in flight when the camera stopped: wait until the outputs go quiet
        # (and the node's statistics have counted them).
        quiet_until = time.monotonic() + 3.0
        last = sum(len(v) for v in received.values())
        while time.monotonic() < quiet_until:
            executor.spin_once(timeout_sec=0.1)
            if sum(len(v) for v in received.values()) != last:
                last = sum(len(v) for v in received.values())
                quiet_until = time.monotonic() + 5.0
    finally:
        if camera is not None and camera.poll() is None:
            _stop(camera)
        rc = _stop(middle)
        log.close()
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown()
    return {'received': received, 'diagnostics': diagnostics, 'exit_code': rc,
            'sent': json.loads(camera_out.strip().splitlines()[-1])['sent'],
            'log_tail': log_path.read_text(errors='replace').splitlines()[-5:],
            'log_path': log_path}


def output_latencies(received: Dict[str, List[tuple]], warmup_frames: int
                     ) -> Dict[str, List[float]]:
    """
    Latencies in s from the header stamp: to the labels, and to the last of the outputs.

    ``all_outputs`` counts the frames (stamps) every output arrived for, latest receipt; the
    first ``warmup_frames`` labels (and their stamps) are left out.
    """
    labels = sorted(received['labels'], key=lambda r: r[1])[warmup_frames:]
    firsts = {stamp for _, stamp in sorted(received['labels'], key=lambda r: r[1])
              [:warmup_frames]}
    last: Dict[int, int] = {}
    counts: Dict[int, int] = {}
    for name in OUTPUTS:
        for recv, stamp in received[name]:
            if stamp not in firsts:
                last[stamp] = max(last.get(stamp, 0), recv)
                counts[stamp] = counts.get(stamp, 0) + 1
    return {'labels': [(recv - stamp) / 1e9 for recv, stamp in labels],
            'all_outputs': [(last[s] - s) / 1e9 for s in sorted(last)
                            if counts[s] == len(OUTPUTS)]}


def bench_node(model_path: Path, device: torch.device, precision: str, rate: float,
               duration: float, reliability: str, warmup_frames: int, workdir: Path,
               cameras: int = 1, accelerate: str = 'auto',
               input_size: Optional[Tuple[int, int]] = None,
               size: Tuple[int, int] = CAMERA_SIZE, output_scale: float = 1.0,
               node_env: Optional[Dict[str, str]] = None) -> Dict:
    """Camera process -> segmentation_node process -> this process, on a real DDS graph."""
    node_cmd = node_command(model_path, device, precision, reliability, cameras, accelerate,
                            input_size, output_scale)
    graph = run_graph(node_cmd, 'segmentation_node', rate, duration, workdir, cameras, size,
                      node_env)
    received, diagnostics, sent = graph['received'], graph['diagnostics'], graph['sent']
    labels = received['labels'][warmup_frames:]
    if len(labels) < 2:
        raise RuntimeError(f'only {len(received["labels"])} labels received from {sent} frames; '
                           'segmentation_node log:\n'
                           + graph['log_path'].read_text(errors='replace')[-3000:])
    latencies = output_latencies(received, warmup_frames)
    span = (labels[-1][0] - labels[0][0]) / 1e9
    stats = summarize(latencies['labels'])
    stats.pop('fps')  # the rate is measured from arrivals, not from the latency
    every = summarize(latencies['all_outputs']) if latencies['all_outputs'] else None
    if every:
        every.pop('fps')
    # The node's stage times (its last /diagnostics: the frames of the last 5 s... up to 1000).
    stages: Dict[str, Dict[str, float]] = {}
    for key, value in diagnostics.items():
        m = re.fullmatch(r'stage_(\w+)_(p50|p99)_ms', key)
        if m:
            stages.setdefault(m.group(1), {})[f'{m.group(2)}_ms'] = float(value)
    sent_labels = stages.pop('stamp_to_labels_sent', None)
    if sent_labels:
        stages['transport_out'] = {
            'p50_ms': round(max(0.0, stats['median_ms'] - sent_labels['p50_ms']), 2),
            'note': 'end to end p50 minus the node\'s stamp-to-labels-sent p50'}
    return {'frame': '{}x{} rgb8'.format(*size), 'model': str(model_path),
            'network_input': diagnostics.get('input_size'),
            'label_upsampling': diagnostics.get('label_upsampling'), 'precision': precision,
            'accelerate': accelerate, 'cameras': cameras, 'output_scale': output_scale,
            'node_input_reliability': reliability, 'camera_rate_hz': rate,
            'duration_s': duration, 'frames_sent': sent,
            'outputs_received': {n: len(v) for n, v in received.items()},
            'warmup_outputs_excluded': warmup_frames,
            'output_fps': round((len(labels) - 1) / span, 3) if span > 0 else None,
            'latency_stamp_to_labels': stats, 'latency_stamp_to_all_outputs': every,
            'stages': stages, 'stamp_to_labels_sent': sent_labels,
            'node_exit_code': graph['exit_code'], 'node_log_tail': graph['log_tail']}


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


def base_environment(device: torch.device) -> Dict:
    """Describe where the numbers were taken: device, CPU, threads, load and versions."""
    info = {
        'device': str(device),
        'device_name': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                        else cpu_model()),
        'cpu_model': cpu_model(), 'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
        'load_average_1m_at_start': round(os.getloadavg()[0], 2),
        'python': platform.python_version(), 'torch': torch.__version__,
        'platform': platform.platform(),
    }
    if device.type == 'cuda':
        info['cuda'] = torch.version.cuda
        info['cudnn'] = torch.backends.cudnn.version()
    return info


def environment(device: torch.device) -> Dict:
    """Describe where the numbers were taken, with the image libraries and ROS middleware."""
    from rclpy.utilities import get_rmw_implementation_identifier

    return {
        **base_environment(device),
        'numpy': np.__version__, 'opencv': cv2.__version__,
        'ros': {'distro': os.environ.get('ROS_DISTRO'),
                'source': 'ROS install' if os.environ.get('ROS_DISTRO') else 'PyPI wheels',
                'rclpy': package_version('rclpy'), 'fastdds': package_version('ros-fastdds'),
                'rmw': get_rmw_implementation_identifier(),
                'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA',
                'FASTDDS_DEFAULT_PROFILES_FILE': ros_environment().get(
                    'FASTDDS_DEFAULT_PROFILES_FILE')},
    }


def device_slug(env: Dict) -> str:
    """Name the device of ``env`` as a lowercase slug (``cpu-`` before a CPU's model)."""
    kind = 'cpu-' if env['device'] == 'cpu' else ''
    return re.sub(r'[^a-z0-9]+', '-', (kind + env['device_name']).lower()).strip('-')


def onnx_cpu_sizes(sizes: str, measure: Callable[[Tuple[int, int]], Dict]) -> Tuple[Dict, List]:
    """
    Run ``measure`` at each size of ``sizes`` ('WxH,...') on the CPU: (environment, results).

    Each result is printed as a JSON line as it comes; the environment holds the onnxruntime
    version, the threads the engines use and the load at the start and at the end.
    """
    import onnxruntime

    from seg_perception.engines import cpu_cores
    from seg_training.base.cli import size_arg

    env = {**base_environment(torch.device('cpu')), 'onnxruntime': onnxruntime.__version__,
           'threads': cpu_cores()}
    results = []
    for size in (size_arg(s) for s in sizes.split(',')):
        res = measure(size)
        print(json.dumps(res), flush=True)
        results.append(res)
    env['load_average_1m_at_end'] = round(os.getloadavg()[0], 2)
    return env, results


def write_report(report: Dict, output: Path, kind: str, tag: str = '') -> Path:
    """Save ``report`` as ``<output>/<kind>-<device>-<date>[-<tag>].json`` and say where."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    suffix = f'-{tag}' if tag else ''
    path = output / f'{kind}-{device_slug(report["environment"])}-{date}{suffix}.json'
    path.write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {path}')
    return path


def result_path(output: Path, env: Dict, quick: bool) -> Path:
    """Return ``<output>/<device>-<date>[-quick].json``, device as a lowercase slug."""
    date = datetime.date.today().isoformat()
    return output / f'{device_slug(env)}-{date}{"-quick" if quick else ""}.json'


def ratios(report: Dict) -> Dict:
    """Pipeline (all outputs) and node p50 over the reference forward p50, fp32."""
    ref = report['reference_forward']['median_ms']
    out: Dict[str, object] = {'reference_forward_p50_ms': ref}
    pipe = next((r for r in report['pipeline'] if r['precision'] == 'fp32'
                 and r['outputs'] == 'labels+color+overlay'), None)
    if pipe:
        out['pipeline'] = round(pipe['median_ms'] / ref, 2)
        # Both timed in the same iterations: the figure least moved by other load.
        out['pipeline_vs_interleaved_forward'] = pipe.get('ratio_to_interleaved_forward')
    node = next((r for r in report.get('node', []) if r['precision'] == 'fp32'), None)
    if node:
        out['node'] = round(node['latency_stamp_to_labels']['median_ms'] / ref, 2)
        forward = node['stages'].get('forward', {}).get('p50_ms')
        if forward:  # the node's own forward stage, on the same frames
            out['node_vs_its_forward_stage'] = round(
                node['latency_stamp_to_labels']['median_ms'] / forward, 2)
    out['targets_cpu'] = TARGET_RATIOS
    return out


def print_stages(stages: Dict[str, Dict[str, float]]) -> None:
    for name, v in stages.items():
        p99 = f'  p99 {v["p99_ms"]:7.2f}' if 'p99_ms' in v else ''
        print(f'           {name:<20} p50 {v["p50_ms"]:7.2f} ms{p99}')


def print_summary(report: Dict) -> None:
    env = report['environment']
    print(f'device {env["device_name"]} ({env["device"]}), torch {env["torch"]}, '
          f'python {env["python"]}, load {env["load_average_1m_at_start"]} -> '
          f'{env.get("load_average_1m_at_end")}')
    r = report['reference_forward']
    print(f'reference forward {r["input"]} (eager fp32): median {r["median_ms"]:.1f} ms  '
          f'p99 {r["p99_ms"]:.1f}')
    for r in report['forward']:
        print(f'forward  {r["input"]:>9} {r["precision"]}: median {r["median_ms"]:8.1f} ms  '
              f'p90 {r["p90_ms"]:8.1f}  p99 {r["p99_ms"]:8.1f}  ({r["fps"]:.1f} fps)')
    for r in report['pipeline']:
        print(f'pipeline {r["frame"]} -> {r["network_input"]} {r["precision"]} '
              f'[{r["outputs"]}, labels {r["label_upsampling"]}]: median {r["median_ms"]:.1f} '
              f'ms  p90 {r["p90_ms"]:.1f}  p99 {r["p99_ms"]:.1f}  ({r["fps"]:.1f} fps)'
              + (f', {r["ratio_to_interleaved_forward"]}x the forward timed alongside'
                 if 'ratio_to_interleaved_forward' in r else ''))
        print_stages(r['stages'])
    for r in report.get('label_upsampling', []):
        print(f'labels   {r["label_upsampling"]:<12} pipeline median {r["median_ms"]:.1f} ms, '
              f'labels stage {r["labels_stage_p50_ms"]:.1f} ms')
    for r in report.get('node', []):
        lat = r['latency_stamp_to_labels']
        print(f'node     {r["frame"]} @ {r["camera_rate_hz"]} Hz {r["precision"]}: '
              f'{r["output_fps"]} fps out, latency p50 {lat["median_ms"]:.1f} ms  '
              f'p90 {lat["p90_ms"]:.1f}  p99 {lat["p99_ms"]:.1f}  '
              f'({r["outputs_received"]["labels"]} labels from {r["frames_sent"]} frames)')
        print_stages(r['stages'])
    print(f'ratios (p50 / reference forward p50): {report["ratios"]}')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--output', type=Path, default=Path('bench/results'),
                        help='folder for the JSON result (default bench/results)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--quick', action='store_true', help='few iterations: a smoke run')
    parser.add_argument('--iterations', type=int, help='timed iterations per measurement')
    parser.add_argument('--warmup', type=int, help='uncounted iterations before timing')
    parser.add_argument('--model', type=Path, default=None,
                        help='model file (default: models/espnetv2_cityscapes.pt)')
    parser.add_argument('--rate', type=float, default=2.0,
                        help='camera rate in Hz (node; default 2: no frame waits for another)')
    parser.add_argument('--duration', type=float, help='seconds the camera publishes (node)')
    parser.add_argument('--node-reliability', default='reliable',
                        choices=('reliable', 'best_effort'),
                        help="the node's input QoS reliability (default reliable)")
    parser.add_argument('--skip-node', action='store_true', help='leave out the node part')
    parser.add_argument('--accelerate', default='auto', choices=ACCELERATIONS,
                        help='engine of the pipeline and node parts (default auto); the '
                        'reference forward is always torch eager')
    parser.add_argument('--cameras', type=int, default=1,
                        help='node part: cameras published at once, segmented in batches by '
                        'one node (default 1)')
    parser.add_argument('--input-size', type=parse_size, default=None, metavar='WxH',
                        help="network input of every part (default: the model's own on the "
                        'CPU, 1024x512 on CUDA)')
    # The camera process of the node benchmark runs this script with --camera.
    parser.add_argument('--camera', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--width', type=int, default=CAMERA_SIZE[0], help=argparse.SUPPRESS)
    parser.add_argument('--height', type=int, default=CAMERA_SIZE[1], help=argparse.SUPPRESS)
    return parser


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``WxH`` into (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size {text!r}: expected WxH, e.g. 1024x512') from None
    return w, h


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.camera:
        return run_camera(args)
    device = resolve_device(args.device)
    cuda = device.type == 'cuda'
    iterations = args.iterations or (5 if args.quick else (100 if cuda else 20))
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    duration = args.duration or (10.0 if args.quick else 40.0)
    model_path = args.model or default_model_path()
    env = environment(device)
    report = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'quick': args.quick, 'iterations': iterations, 'warmup_iterations': warmup,
              'environment': env}
    # On a GPU the acceptance is about 1024x512 network input; on the CPU the model's own size.
    size = args.input_size or ((1024, 512) if cuda else None)
    report['reference_forward'] = bench_reference(model_path, device, warmup, iterations, size)
    report['forward'] = bench_forward(device, warmup, iterations)
    report['pipeline'] = bench_pipeline(model_path, device, warmup, iterations, args.accelerate,
                                        size)
    report['label_upsampling'] = bench_label_upsampling(model_path, device, warmup, iterations,
                                                        size, args.accelerate)
    if not args.skip_node:
        with tempfile.TemporaryDirectory(prefix='seg_bench_') as tmp:
            report['node'] = [bench_node(model_path, device, p, args.rate, duration,
                                         args.node_reliability,
                                         warmup_frames=1 if args.quick else 2,
                                         workdir=Path(tmp), cameras=args.cameras,
                                         accelerate=args.accelerate, input_size=size)
                              for p in (['fp32', 'fp16'] if cuda else ['fp32'])]
    report['ratios'] = ratios(report)
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
