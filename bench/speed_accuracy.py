#!/usr/bin/env python3
"""
A speed-accuracy map to pick a model, an engine and a network input size from.

    python bench/speed_accuracy.py --output bench/results/speed_accuracy
        [--models models/espnetv2_cityscapes.pt,models/espnetv2_camvid.pt]
        [--engines none,channels_last,onnxruntime,onnxruntime_int8]
        [--sizes 1024x512,768x384,512x256] [--camvid-root CAMVID] [--cityscapes-root CS]
        [--calibrate FRAMES_DIR] [--node [--node-engines onnxruntime]] [--quick]

For every model, engine and network input size, one :class:`SegmentationPipeline` (the node's)
is built and measured:

* ``forward``: the engine alone on a normalised batch of one frame (bench_engines' ``Case``), the
  engines of one model and size timed in turns so that a busy machine slows them alike;
* ``pipeline``: the whole pipeline on a 2048x1024 rgb8 frame, labels + colour + overlay;
* ``miou``: the labels the pipeline publishes, at each real frame's own size, scored against its
  hand labels: CamVid test frames (``--camvid-root``, the SegNet tutorial's folder; default the
  4 committed frames of ``samples/camvid``; a Cityscapes model through
  ``config/class_maps/camvid_from_cityscapes.yaml``) and Cityscapes frames with gtFine
  (``--cityscapes-root``, Cityscapes layout, split ``val``; a model with CamVid's classes is not
  scored there);
* ``node`` (``--node``): segmentation_node end to end, camera stamp to labels received, at
  ``--rate`` Hz for ``--duration`` s (bench_inference's node benchmark).

``--calibrate DIR`` first writes, for every model and size, a copy of the model file with its
int8 calibration made on the frames of DIR (``seg-export --calibrate``; the weights stay
bit-identical, so every engine of that size runs the copy); without it ``onnxruntime_int8`` runs
only for a model file that carries a calibration of that size. Engines that cannot run here (a
CUDA engine on the CPU, int8 without calibration) are listed with the reason.

Writes ``speed_accuracy-<device>-<date>.json`` (device, versions, load average at start and end,
medians and percentiles), ``.md`` (the table) and ``.png`` (mIoU against forward time, one
marker per engine, one colour per model).
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from bench_engines import bench_group, scene  # this folder
from bench_inference import base_environment, bench_node, device_slug  # this folder
from seg_perception.engines import ACCELERATIONS
from seg_perception.pipeline import Frame
from seg_training.base.cli import resolve_device
from seg_training.datasets.build import build_dataset
from seg_training.evaluation.seg_eval import mapped_classes, score_pipeline
from seg_training.export import calibrate_model
from seg_training.nets.checkpoint import load_model
from seg_training.nets.options import network_size_arg

ROOT = Path(__file__).resolve().parents[1]
MODELS = (ROOT / 'models' / 'espnetv2_cityscapes.pt', ROOT / 'models' / 'espnetv2_camvid.pt')
ENGINES = ('none', 'channels_last', 'onnxruntime', 'onnxruntime_int8')
SIZES = ((1024, 512), (768, 384), (512, 256))
CLASS_MAP = ROOT / 'config' / 'class_maps' / 'camvid_from_cityscapes.yaml'
CAMERA = (2048, 1024)


class RealFrames:
    """The real labelled frames one model is scored on, opened once."""

    def __init__(self, info: Any, camvid_root: Optional[Path], cityscapes_root: Optional[Path],
                 max_frames: Optional[int]) -> None:
        self.sets: List[Tuple[str, Any, Any, Optional[np.ndarray]]] = []
        if camvid_root is not None:
            ds = build_dataset('camvid', camvid_root, 'test', max_samples=max_frames)
            scored, lookup = info.classes, None
            if tuple(info.classes.names) != tuple(ds.classes.names):
                scored, lookup, _ = mapped_classes(CLASS_MAP, info.classes, ds.classes,
                                                   'model', f'camvid:{camvid_root}')
            self.sets.append(('camvid_test', ds, scored, lookup))
        if cityscapes_root is not None:
            ds = build_dataset('cityscapes', cityscapes_root, 'val', max_samples=max_frames)
            if tuple(info.classes.names[:ds.classes.num_classes]) == tuple(ds.classes.names):
                self.sets.append(('cityscapes', ds, info.classes, None))

    def score(self, pipe: Any) -> Dict[str, Dict[str, Any]]:
        """Score the pipeline's labels on each set: mIoU and pixel accuracy."""
        out = {}
        for name, ds, scored, lookup in self.sets:
            m, _, _ = score_pipeline(pipe, ds, scored, lookup)
            out[name] = {'miou': round(float(m['miou']), 4),
                         'pixel_accuracy': round(float(m['pixel_accuracy']), 4),
                         'frames': len(ds)}
        return out


def calibrated_copy(model_path: Path, size: Tuple[int, int], frames_dir: Path, count: int,
                    folder: Path) -> Path:
    """Write a copy of the model file with its int8 calibration at ``size``; return its path."""
    out = folder / f'{model_path.stem}_{size[0]}x{size[1]}.pt'
    calibrate_model(model_path, frames_dir, out, size=size, frames=count,
                    description=f'{count} frames of {frames_dir.name}')
    return out


def measure_model(model_path: Path, device: torch.device, engines: Sequence[str],
                  sizes: Sequence[Tuple[int, int]], frames: RealFrames, warmup: int,
                  iterations: int, calibrate: Optional[Path] = None,
                  calibration_frames: int = 32,
                  workdir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Rows of one model: every engine at every size, with its real-frame scores."""
    camera = [Frame(scene(*CAMERA), 'rgb8')]
    rows = []
    for size in sizes:
        run_path = model_path
        if calibrate is not None and 'onnxruntime_int8' in engines:
            run_path = calibrated_copy(model_path, size, calibrate, calibration_frames,
                                       workdir or Path(tempfile.gettempdir()))
        cases: Dict[str, Any] = {}
        group = bench_group(str(run_path), device, engines, 'fp32', size, 1, camera, warmup,
                            iterations, ('forward', 'pipeline'), keep=cases)
        for row in sorted(group, key=lambda r: engines.index(r['engine'])):
            row['model'] = model_path.name
            row['model_run'] = str(run_path) if run_path != model_path else None
            case = cases.get(row['engine'])
            if case is not None:
                row['scores'] = frames.score(case.pipe)
            print(_line(row), flush=True)
            rows.append(row)
    return rows


def _line(row: Dict[str, Any]) -> str:
    head = f'{row["model"]:>24} {row["engine"]:>16} {row["network_input"]:>9}'
    if 'skipped' in row:
        return f'{head}: skipped ({row["skipped"]})'
    scores = ', '.join(f'{k} {v["miou"]:.3f}' for k, v in row.get('scores', {}).items())
    return (f'{head}: forward p50 {row["forward"]["median_ms"]:7.1f} ms, pipeline p50 '
            f'{row["pipeline"]["median_ms"]:7.1f} ms; mIoU {scores}')


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Return the table the docs show (markdown)."""
    sets = sorted({k for r in rows for k in r.get('scores', {})})
    head = ['model', 'engine', 'input', 'forward p50 ms', 'pipeline p50 ms', 'node p50 ms'] + [
        f'mIoU {s}' for s in sets]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * 3 + '---:|' * (len(head) - 3)]
    for r in rows:
        if 'skipped' in r:
            continue
        node = r.get('node', {}).get('latency_stamp_to_labels', {}).get('median_ms')
        cells = [r['model'].replace('.pt', ''), r['engine'], r['network_input'],
                 f'{r["forward"]["median_ms"]:.1f}', f'{r["pipeline"]["median_ms"]:.1f}',
                 '' if node is None else f'{node:.1f}']
        cells += [f'{r["scores"][s]["miou"]:.3f}' if s in r.get('scores', {}) else ''
                  for s in sets]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows: Sequence[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Plot mIoU on the first scored set against forward p50, one marker per engine."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [r for r in rows if 'skipped' not in r and r.get('scores')]
    if not rows:
        return None
    score_set = sorted(rows[0]['scores'])[0]
    markers = dict(zip(ENGINES + tuple(sorted(set(ACCELERATIONS) - set(ENGINES))), 'osD^v<>p*'))
    models = sorted({r['model'] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if score_set not in r['scores']:
            continue
        color = f'C{models.index(r["model"])}'
        x, y = r['forward']['median_ms'], r['scores'][score_set]['miou']
        ax.scatter(x, y, marker=markers.get(r['engine'], 'o'), color=color, s=50)
        ax.annotate(r['network_input'], (x, y), fontsize=7, xytext=(4, 3),
                    textcoords='offset points')
    for m in models:
        ax.scatter([], [], color=f'C{models.index(m)}', label=m)
    for e in sorted({r['engine'] for r in rows}):
        ax.scatter([], [], color='grey', marker=markers.get(e, 'o'), label=e)
    ax.set_xscale('log')
    ax.set_xlabel('forward p50 (ms, log scale)')
    ax.set_ylabel(f'mIoU, {score_set.replace("_", " ")}')
    ax.set_title('speed and accuracy on this machine')
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[1].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--output', type=Path, required=True, help='folder for the JSON, md and png')
    p.add_argument('--models', default=','.join(str(m) for m in MODELS),
                   help='comma-separated model files')
    p.add_argument('--engines', default=','.join(ENGINES), help='comma-separated engines')
    p.add_argument('--sizes', default=','.join('%dx%d' % s for s in SIZES),
                   help='comma-separated network input sizes WxH')
    p.add_argument('--camvid-root', type=Path, default=ROOT / 'samples' / 'camvid',
                   help='CamVid folder whose test split is scored')
    p.add_argument('--cityscapes-root', type=Path, default=None,
                   help='Cityscapes-layout folder (leftImg8bit/val, gtFine/val) to score on')
    p.add_argument('--max-frames', type=int, default=None, help='frames per set at most')
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    p.add_argument('--iterations', type=int, default=None, help='timed calls per part')
    p.add_argument('--warmup', type=int, default=3, help='uncounted calls per part')
    p.add_argument('--calibrate', type=Path, default=None, metavar='FRAMES_DIR',
                   help='calibrate a copy of each model at each size on these frames for int8')
    p.add_argument('--calibration-frames', type=int, default=32,
                   help='frames of --calibrate used per calibration')
    p.add_argument('--node', action='store_true',
                   help='also time segmentation_node end to end (the --node-engines rows)')
    p.add_argument('--node-engines', default='onnxruntime',
                   help='comma-separated engines whose rows --node times')
    p.add_argument('--rate', type=float, default=2.0, help='camera rate of --node (Hz)')
    p.add_argument('--duration', type=float, default=20.0, help='camera seconds of --node')
    p.add_argument('--quick', action='store_true', help='few iterations (a smoke test)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    engines = args.engines.split(',')
    unknown = sorted(set(engines) - set(ACCELERATIONS))
    if unknown:
        raise SystemExit(f'speed_accuracy: unknown engines {unknown} (choose from '
                         f'{list(ACCELERATIONS)})')
    sizes = [network_size_arg(s) for s in args.sizes.split(',')]
    models = [Path(m) for m in args.models.split(',')]
    for m in models:
        if not m.is_file():
            raise SystemExit(f'speed_accuracy: {m}: model file not found')
    iterations = args.iterations or (2 if args.quick else 15)
    warmup = min(args.warmup, 1) if args.quick else args.warmup
    env = base_environment(device)
    report: Dict[str, Any] = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'camera_frame': '%dx%d rgb8' % CAMERA, 'iterations': iterations,
        'warmup_iterations': warmup, 'quick': args.quick, 'environment': env,
        'real_frames': {'camvid_test': str(args.camvid_root) if args.camvid_root else None,
                        'cityscapes_val': (str(args.cityscapes_root) if args.cityscapes_root
                                           else None)},
        'rows': []}
    node_engines = args.node_engines.split(',')
    for model_path in models:
        _, info = load_model(model_path)
        frames = RealFrames(info, args.camvid_root, args.cityscapes_root, args.max_frames)
        with tempfile.TemporaryDirectory(prefix='speed_accuracy_') as tmp:
            rows = measure_model(model_path, device, engines, sizes, frames, warmup, iterations,
                                 args.calibrate, args.calibration_frames, Path(tmp))
            for row in rows:
                if args.node and 'skipped' not in row and row['engine'] in node_engines:
                    w, h = map(int, row['network_input'].split('x'))
                    row['node'] = bench_node(
                        Path(row['model_run'] or model_path), device, 'fp32', args.rate,
                        args.duration, 'reliable', 3, Path(tmp), accelerate=row['engine'],
                        input_size=(w, h))
                    print(f'  node end to end p50 '
                          f'{row["node"]["latency_stamp_to_labels"]["median_ms"]:.1f} ms',
                          flush=True)
        report['rows'].extend(rows)
    env['load_average_1m_at_end'] = round(os.getloadavg()[0], 2)
    args.output.mkdir(parents=True, exist_ok=True)
    name = f'speed_accuracy-{device_slug(env)}-{datetime.date.today().isoformat()}'
    name += '-quick' if args.quick else ''
    path = args.output / f'{name}.json'
    path.write_text(json.dumps(report, indent=2) + '\n')
    (args.output / f'{name}.md').write_text(markdown(report['rows']))
    png = plot(report['rows'], args.output / f'{name}.png')
    print(markdown(report['rows']))
    print(f'load average 1 min: {env["load_average_1m_at_start"]} at start, '
          f'{env["load_average_1m_at_end"]} at end; saved {path}'
          + (f' and {png}' if png else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
