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
4. Run the default model (a real Cityscapes model) on the bundled real CamVid frames and draw
   them next to their hand labels (``real_frames.png``, with the mIoU on them).
5. Print frames sent and segmented per camera, fps, latency percentiles and drops.

The synthetic drive runs the synthetic model (``models/erfnet_synth.pt``, trained on such
scenes); real frames run the default model: each model on the pictures it was made for.

Latency is wall-clock time from replay publishing a frame to this process receiving all of its
outputs. The node runs on sim time, so the publish time of a frame comes from the ``/clock``
message replay sends just before it (its DDS source timestamp), and the receipt time from the
DDS reception timestamp of each output.
"""

import argparse
import json
import logging
import os
from pathlib import Path
import sys
import textwrap
import time
from typing import Any, Dict, Optional, Sequence

import rclpy
from rclpy.context import Context

from seg_perception import ros_types
from seg_perception.bag import AtomicBagWriter
from seg_perception.demo.drive import DemoError, DriveSpec, record_drive
from seg_perception.demo.graph import NODE_NAME, Recorder, run_graph
from seg_perception.demo.media import choose_times, write_contact_sheet, write_video
from seg_perception.demo.real import segment_real_frames
from seg_perception.demo.timing import camera_summary, write_frames_csv
from seg_perception.resources import (default_model_path, ResourceNotFoundError, samples_root,
                                      synth_model_path)
from seg_training.base.classes import ClassTable
from seg_training.base.cli import HelpFormatter, size_arg
from seg_training.synth.style import DOMAINS

_logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='python -m seg_perception.demo', description='Record a synthetic front/rear drive, '
        'replay it into segmentation_node over DDS, record the outputs and write an overlay '
        'video, a contact sheet and a summary.')
    p.add_argument('--output-dir', type=Path, default=Path('out/demo'), help='output folder')
    p.add_argument('--model', type=Path, default=None,
                   help='model of the synthetic drive (default: the bundled synthetic model, '
                   'models/erfnet_synth.pt)')
    p.add_argument('--real-model', type=Path, default=None,
                   help='model of the real frames (default: the bundled default model, '
                   'models/espnetv2_cityscapes.pt)')
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


def resolve_model(model: Optional[Path], bundled=synth_model_path, option: str = '--model'
                  ) -> Path:
    """Return ``model`` or, when None, the bundled file ``bundled()`` finds."""
    if model is None:
        try:
            return bundled()
        except ResourceNotFoundError as e:
            raise DemoError(str(e)) from None
    if not model.is_file():
        raise DemoError(f'{option} {model}: no such file')
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
    real = summary['real_frames']
    lines.append(f'  real frames: {_short(real["model"])} on {len(real["frames"])} CamVid frames '
                 f'(hand labels): mIoU {real["miou"]:.3f}')
    lines.append(f'took {summary["seconds"]["total"]:.0f} s')
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the whole demo; returns the summary (also written to summary.json)."""
    t_start = time.monotonic()
    check_args(args)
    model = resolve_model(args.model)
    real_model = resolve_model(args.real_model, default_model_path, '--real-model')
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    spec = DriveSpec(seed=args.seed, seconds=args.seconds, size=tuple(args.size),
                     domain=args.domain)
    paths = {'drive': out / 'drive', 'segmented': out / 'segmented',
             'video': out / 'overlay.mp4', 'contact_sheet': out / 'contact_sheet.png',
             'frames': out / 'frames.csv', 'node_log': out / 'node.log',
             'replay_log': out / 'replay.log', 'real_frames': out / 'real_frames.png',
             'summary': out / 'summary.json'}
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
    t0 = time.monotonic()
    try:
        real = segment_real_frames(real_model, samples_root(), paths['real_frames'])
    except ResourceNotFoundError as e:
        raise DemoError(str(e)) from None
    seconds['real_frames'] = time.monotonic() - t0
    seconds['total'] = time.monotonic() - t_start
    summary = {
        'model': str(model),
        'real_frames': real,
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
