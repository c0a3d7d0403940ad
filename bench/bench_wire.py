#!/usr/bin/env python3
"""
Measure the node against the floor of its wire: what moving its bytes between processes costs.

    python bench/bench_wire.py --output bench/results [--quick] [--size 2048x1024]
        [--output-scale 1.0] [--rate 2] [--duration 40]

In one run, on the same frames (rgb8 of ``--size``, default 2048x1024) and the same model
(default: the bundled one at its own input size, CPU):

* ``pipeline``: :class:`SegmentationPipeline` with labels, colour and overlay (bench_inference's
  ``time_pipeline``: end to end and per stage);
* ``node``: camera process -> ``segmentation_node`` process -> this process (bench_inference's
  ``bench_node``), latency from the header stamp to the receipt of the labels and of the last of
  the three outputs;
* ``floor``: the same graph with a bare rclpy relay in place of the node: it subscribes to
  ``image`` with the node's input QoS and, from the subscription callback, publishes the bytes
  the node would (labels mono8 at camera size, colour and overlay rgb8 at ``--output-scale``)
  with the node's output QoS, each a prepared serialized Image with the input's header copied
  in, and the node's allocator settings (seg_perception.allocator). Same camera, same Fast DDS
  profile (config/fastdds_large_images.xml) in every process.

``node_share`` = node - pipeline - floor (medians): what the node itself adds between the
arrival of a frame and the publication of its outputs (reading the message, queueing, the
worker, serialization, executor). ``--repeat N`` alternates the three parts N times (the load
of a shared machine drifts) and reports the medians over the rounds. The result (device,
versions, load average, medians and percentiles) is printed and saved as
``<output>/wire-<device>-<date>[-quick].json``.
"""

# First, as in the node: the package sets OpenMP's wait policy before torch loads.
import seg_perception  # noqa: F401, I100

import argparse
import datetime
import json
import os
from pathlib import Path
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_inference as bench  # noqa: E402

from seg_perception.pipeline import Outputs, SegmentationPipeline  # noqa: E402
from seg_perception.resources import default_model_path  # noqa: E402
from seg_training.base.cli import resolve_device  # noqa: E402
from seg_training.nets.checkpoint import load_model  # noqa: E402

HEADER_BYTES = 12  # CDR encapsulation (4) and header.stamp (8): what the relay copies in


def relay_outputs(width: int, height: int, scale: float) -> List[tuple]:
    """(name, (H, W[, C]) uint8 array, encoding) of the outputs the node publishes per frame."""
    import numpy as np

    from seg_perception.postprocess import scaled_size

    out_h, out_w = scaled_size((height, width), scale)
    return [('labels', np.zeros((height, width), np.uint8), 'mono8'),
            ('color', np.zeros((out_h, out_w, 3), np.uint8), 'rgb8'),
            ('overlay', np.zeros((out_h, out_w, 3), np.uint8), 'rgb8')]


def run_relay(args: argparse.Namespace) -> int:
    """Relay every ``image`` as the node's three outputs, bytes prepared (the relay process)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from seg_perception.allocator import keep_frame_buffers
    from seg_perception.node import input_qos, OUTPUT_QOS
    from seg_perception.params import NodeParams
    from seg_perception.ros_image import serialized_image

    keep_frame_buffers()  # as the node does: the floor is not raised by page faults
    rclpy.init()
    node = rclpy.create_node('bench_wire_relay')
    header = Header(frame_id='bench_camera')  # the camera's: the same layout after the stamp
    outputs = []
    for name, array, encoding in relay_outputs(args.width, args.height, args.output_scale):
        outputs.append((node.create_publisher(Image, f'segmentation/{name}', OUTPUT_QOS),
                        serialized_image(header, array, encoding)[HEADER_BYTES:]))

    def on_image(data: bytes) -> None:
        head = data[:HEADER_BYTES]  # encapsulation and stamp of the input
        for pub, tail in outputs:
            pub.publish(head + tail)

    qos = input_qos(NodeParams(reliability=args.node_reliability))
    node.create_subscription(Image, 'image', on_image, qos, raw=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def bench_floor(args: argparse.Namespace, duration: float, warmup_frames: int,
                workdir: Path) -> Dict:
    """Run the relay graph (camera -> bare relay -> this process); latencies as the node's."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--relay', '--width',
           str(args.size[0]), '--height', str(args.size[1]), '--output-scale',
           str(args.output_scale), '--node-reliability', args.node_reliability]
    graph = bench.run_graph(cmd, 'relay', args.rate, duration, workdir, size=args.size)
    latencies = bench.output_latencies(graph['received'], warmup_frames)
    if len(latencies['labels']) < 2 or len(latencies['all_outputs']) < 2:
        raise RuntimeError(f'relay: {len(latencies["labels"])} frames received of '
                           f'{graph["sent"]}; log:\n' + '\n'.join(graph['log_tail']))
    return {'frames_sent': graph['sent'],
            'outputs_received': {n: len(v) for n, v in graph['received'].items()},
            'latency_stamp_to_labels': _summary(latencies['labels']),
            'latency_stamp_to_all_outputs': _summary(latencies['all_outputs']),
            'relay_exit_code': graph['exit_code']}


def _summary(seconds: Sequence[float]) -> Dict[str, float]:
    stats = bench.summarize(seconds)
    stats.pop('fps')
    return stats


def bench_pipeline(args: argparse.Namespace, device, warmup: int, iterations: int) -> Dict:
    """Time the pipeline on the same frames with labels, colour and overlay."""
    from std_msgs.msg import Header

    from seg_perception.ros_image import serialized_image

    msg = serialized_image(Header(frame_id='bench'), bench.camera_image(*args.size), 'rgb8')
    model, info = load_model(args.model)
    pipe = SegmentationPipeline(model, info, device=str(device), input_size=args.input_size,
                                warmup=True, accelerate=args.accelerate)
    timed = bench.time_pipeline(pipe, msg, Outputs(confidence=False), warmup, iterations,
                                'pipeline', output_scale=args.output_scale)
    return {'network_input': '{}x{}'.format(*pipe.input_size),
            'engine': pipe.engine.describe(), **timed['end_to_end'],
            'stages': timed['stages']}


PIPELINE_STAGES = ('upload', 'resize', 'forward', 'labels', 'color', 'overlay')


def shares(report: Dict) -> Dict:
    """
    Node end to end, pipeline, floor and the node's own share (medians, ms).

    ``node_share_ms`` subtracts the pipeline timed in this process; ``node_share_same_frames_ms``
    the sum of the node's own pipeline stage p50s (the same frames under the same load: a
    shared machine's load moves the short in-process timing by tens of ms).
    """
    out: Dict[str, Dict[str, float]] = {}
    pipeline = report['pipeline']['median_ms']
    stages = report['node']['stages']
    in_node = round(sum(stages[k]['p50_ms'] for k in PIPELINE_STAGES if k in stages), 2)
    for key in ('latency_stamp_to_all_outputs', 'latency_stamp_to_labels'):
        node = report['node'][key]['median_ms']
        floor = report['floor'][key]['median_ms']
        out[key.replace('latency_stamp_to_', 'to_')] = {
            'node_end_to_end_ms': node, 'pipeline_ms': pipeline,
            'pipeline_in_node_ms': in_node, 'floor_ms': floor,
            'node_share_ms': round(node - pipeline - floor, 2),
            'node_share_same_frames_ms': round(node - in_node - floor, 2)}
    return out


def median_shares(rounds: Sequence[Dict]) -> Dict:
    """Per path, the median over rounds of every figure of :func:`shares`, and the rounds'."""
    import numpy as np

    out = {}
    for key in rounds[0]:
        med = {name: round(float(np.median([r[key][name] for r in rounds])), 2)
               for name in rounds[0][key]}
        for name in ('node_share_ms', 'node_share_same_frames_ms'):
            med[name.replace('_ms', '_per_round_ms')] = [r[key][name] for r in rounds]
        out[key] = med
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--output', type=Path, default=Path('bench/results'),
                        help='folder for the JSON result (default bench/results)')
    parser.add_argument('--quick', action='store_true', help='a few seconds of each part')
    parser.add_argument('--device', default='cpu', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--model', type=Path, default=None,
                        help='model file (default: the bundled models/erfnet_synth.pt)')
    parser.add_argument('--size', type=bench.parse_size, default=bench.CAMERA_SIZE,
                        metavar='WxH', help='camera frame size (default 2048x1024)')
    parser.add_argument('--input-size', type=bench.parse_size, default=None, metavar='WxH',
                        help="network input (default: the model's own)")
    parser.add_argument('--output-scale', type=float, default=1.0,
                        help="the node's output_scale: colour and overlay size (default 1)")
    parser.add_argument('--accelerate', default='auto', choices=bench.ACCELERATIONS)
    parser.add_argument('--rate', type=float, default=2.0,
                        help='camera rate in Hz (default 2: no frame waits for another)')
    parser.add_argument('--duration', type=float,
                        help='seconds the camera publishes, per graph (default 40; quick 4)')
    parser.add_argument('--iterations', type=int, help='timed pipeline iterations')
    parser.add_argument('--repeat', type=int, default=1,
                        help='rounds of pipeline, node and floor, alternating; the shares are '
                        'the medians over the rounds (default 1)')
    parser.add_argument('--node-reliability', default='reliable',
                        choices=('reliable', 'best_effort'),
                        help="the node's (and relay's) input QoS reliability (default reliable)")
    # The relay process of the floor runs this script with --relay.
    parser.add_argument('--relay', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--width', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--height', type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.relay:
        return run_relay(args)
    args.model = args.model or default_model_path()
    device = resolve_device(args.device)
    iterations = args.iterations or (3 if args.quick else 20)
    warmup = 1 if args.quick else 3
    duration = args.duration or (4.0 if args.quick else 40.0)
    env = bench.environment(device)
    report = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'quick': args.quick, 'frame': '{}x{} rgb8'.format(*args.size),
              'output_scale': args.output_scale, 'camera_rate_hz': args.rate,
              'duration_s': duration, 'model': str(args.model), 'environment': env}
    rounds = []
    with tempfile.TemporaryDirectory(prefix='seg_bench_wire_') as tmp:
        for _ in range(args.repeat):  # node and floor alternate: drifting load hits both
            part = {'pipeline': bench_pipeline(args, device, warmup, iterations)}
            part['node'] = bench.bench_node(
                args.model, device, 'fp32', args.rate, duration, args.node_reliability,
                warmup_frames=warmup, workdir=Path(tmp), accelerate=args.accelerate,
                input_size=args.input_size, size=args.size, output_scale=args.output_scale)
            part['floor'] = bench_floor(args, duration, warmup, Path(tmp))
            part['shares'] = shares(part)
            part['load_average_1m'] = round(os.getloadavg()[0], 2)
            rounds.append(part)
    report.update(rounds[0])
    if len(rounds) > 1:
        report['rounds'] = rounds
        report['shares'] = median_shares([r['shares'] for r in rounds])
    env['load_average_1m_at_end'] = round(os.getloadavg()[0], 2)
    env['load_average'] = [round(v, 2) for v in os.getloadavg()]
    date = datetime.date.today().isoformat()
    quick = '-quick' if args.quick else ''
    path = args.output / f'wire-{bench.device_slug(env)}-{date}{quick}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + '\n')
    print_summary(report)
    print(f'saved {path}')
    return 0


def print_summary(report: Dict) -> None:
    env = report['environment']
    print(f'device {env["device_name"]} ({env["device"]}), python {env["python"]}, '
          f'rclpy {env["ros"]["rclpy"]}, load {env["load_average_1m_at_start"]} -> '
          f'{env["load_average_1m_at_end"]}; {report["frame"]}, output_scale '
          f'{report["output_scale"]}, camera {report["camera_rate_hz"]} Hz')
    p = report['pipeline']
    print(f'pipeline  median {p["median_ms"]:7.1f} ms  p90 {p["p90_ms"]:7.1f}  '
          f'p99 {p["p99_ms"]:7.1f}  ({p["engine"]}, input {p["network_input"]})')
    bench.print_stages(p['stages'])
    for part in ('node', 'floor'):
        for key in ('latency_stamp_to_labels', 'latency_stamp_to_all_outputs'):
            v = report[part][key]
            print(f'{part:<6} {key.replace("latency_stamp_", ""):<15} median '
                  f'{v["median_ms"]:7.1f} ms  p90 {v["p90_ms"]:7.1f}  p99 {v["p99_ms"]:7.1f}  '
                  f'(n {v["n"]})')
    bench.print_stages(report['node']['stages'])
    for key, v in report['shares'].items():
        print(f'{key}: node {v["node_end_to_end_ms"]:.1f} - pipeline {v["pipeline_ms"]:.1f} - '
              f'floor {v["floor_ms"]:.1f} = node share {v["node_share_ms"]:.1f} ms; with the '
              f'node\'s own pipeline stages ({v["pipeline_in_node_ms"]:.1f} ms): '
              f'{v["node_share_same_frames_ms"]:.1f} ms'
              + (f' (medians; per round {v["node_share_same_frames_per_round_ms"]})'
                 if 'node_share_same_frames_per_round_ms' in v else ''))


if __name__ == '__main__':
    sys.exit(main())
