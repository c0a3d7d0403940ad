#!/usr/bin/env python3
"""
Compare the network engines (seg_perception/engines.py) inside the segmentation pipeline.

    python bench/bench_engines.py --output bench/results [--device auto|cpu|cuda] [--quick]

For each engine, precision, network input size and batch size, one
:class:`SegmentationPipeline` runs the default model (``models/espnetv2_cityscapes.pt``, or
``--model``) and is timed on

* ``forward``: the engine alone on a normalised (B, 3, h, w) batch, as the pipeline calls it;
* ``pipeline``: the whole pipeline on B camera frames (``--frame``, default 2048x1024 rgb8, a
  seg-synth street scene), labels + colour + overlay.

The engines are timed in turns (one call of each, then the next round), so a busy machine slows
all of them alike and their ratios stay comparable. Set-up (construction and warm-up: export,
compile or capture) is timed once. The labels of each engine are compared with those of the plain
model (``none``) in the same precision: pixel agreement and the largest logit difference.

Results (median, p99, ... in ms; device, versions, CPU and the 1-minute load average) are
printed and saved as ``<output>/engines-<device>-<date>.json``.
"""

# First, as in the node: the package sets OpenMP's wait policy before torch loads.
import seg_perception  # noqa: F401, I100

import argparse
import datetime
import json
import os
from pathlib import Path
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from bench_inference import base_environment, device_slug, summarize  # this folder
from seg_perception.engines import ACCELERATIONS, resolve
from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_perception.resources import default_model_path
from seg_training.base.cli import resolve_device, size_arg
from seg_training.nets.checkpoint import load_model
from seg_training.nets.options import network_size_arg
from seg_training.synth import render_frame

CPU_ENGINES = ('none', 'channels_last', 'compile', 'onnxruntime')
CUDA_ENGINES = ('none', 'channels_last', 'compile', 'cuda_graphs')


def scene(width: int, height: int, seed: int = 7) -> np.ndarray:
    """Make an (H, W, 3) uint8 RGB seg-synth street view: rendered small, resized up."""
    rgb, _ = render_frame(seed, (min(width, 512), min(height, 256)))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def environment(device: torch.device) -> Dict:
    """Describe where the numbers were taken, with the onnxruntime version."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:  # not needed on CUDA
        ort_version = None
    return {**base_environment(device), 'onnxruntime': ort_version}


class Case:
    """One pipeline (engine, precision, size) and its inputs for one batch size."""

    def __init__(self, model_path: str, device: torch.device, engine: str, precision: str,
                 size: Tuple[int, int], batch: int, frames: List[Frame]) -> None:
        self.key = {'engine': engine, 'precision': precision, 'network_input': '%dx%d' % size,
                    'batch': batch}
        t0 = time.perf_counter()
        model, info = load_model(model_path)
        self.pipe = SegmentationPipeline(model, info, device=str(device), precision=precision,
                                         input_size=size, accelerate=engine, warmup=False)
        self.frames = frames[:batch]
        self.x = torch.cat([self.pipe._network_input(self.pipe._to_rgb(f))
                            for f in self.frames])  # (B, 3, h, w) normalised
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (
            lambda: None)
        with torch.inference_mode():
            self.pipe.engine(self.x)  # export / compile / capture for this shape
        self.sync()
        self.setup_s = round(time.perf_counter() - t0, 2)
        self.times: Dict[str, List[float]] = {'forward': [], 'pipeline': []}

    def forward(self) -> None:
        with torch.inference_mode():
            self.pipe.engine(self.x)

    def pipeline(self) -> None:
        self.pipe(self.frames, Outputs())

    def run(self, part: str, record: bool) -> None:
        t0 = time.perf_counter()
        getattr(self, part)()
        self.sync()
        if record:
            self.times[part].append(time.perf_counter() - t0)

    def labels_and_logits(self) -> Tuple[np.ndarray, torch.Tensor]:
        """Labels of the first frame at its own size, and the network's logits (on the CPU)."""
        return self.pipe(self.frames[:1], Outputs())[0].labels, \
            self.pipe.logits(self.frames[:1]).cpu()


def compare(case: Case, reference: Optional[Case]) -> Dict:
    """Agreement of ``case``'s labels with the plain model's, and the largest logit difference."""
    if reference is None:
        return {}
    labels, logits = case.labels_and_logits()
    ref_labels, ref_logits = reference.labels_and_logits()
    return {'label_agreement_vs_none': round(float(np.mean(labels == ref_labels)), 6),
            'max_abs_logit_diff_vs_none': float((logits - ref_logits).abs().max())}


def bench_group(model_path: str, device: torch.device, engines: Sequence[str], precision: str,
                size: Tuple[int, int], batch: int, frames: List[Frame], warmup: int,
                iterations: int, parts: Sequence[str],
                keep: Optional[Dict[str, Case]] = None) -> List[Dict]:
    """
    Time the engines at one precision, size and batch, in turns; return one row per engine.

    ``keep``, a dict, receives each engine's :class:`Case` (its pipeline stays usable).
    """
    cases, results = [], []
    for engine in engines:
        try:
            resolve(engine, device, precision)
        except RuntimeError as e:
            results.append({'engine': engine, 'precision': precision,
                            'network_input': '%dx%d' % size, 'batch': batch,
                            'skipped': str(e)})
            continue
        print(f'set-up {engine} {precision} {size[0]}x{size[1]} batch {batch} ...', flush=True)
        cases.append(Case(model_path, device, engine, precision, size, batch, frames))
        if keep is not None:
            keep[engine] = cases[-1]
    for part in parts:
        for i in range(warmup + iterations):
            for case in cases:
                case.run(part, record=i >= warmup)
    reference = next((c for c in cases if c.key['engine'] == 'none'), None)
    for case in cases:
        row = dict(case.key, setup_s=case.setup_s, engine_description=case.pipe.engine.describe(),
                   frame='%dx%d rgb8' % case.frames[0].image.shape[1::-1])
        for part in parts:
            row[part] = summarize(case.times[part], digits=3)
        row.update(compare(case, reference))
        results.append(row)
    base = next((r for r in results if r['engine'] == 'none' and 'forward' in r), None)
    for r in results:
        for part in parts:
            if base is not None and part in r:
                r[f'{part}_speedup_vs_none'] = round(
                    base[part]['median_ms'] / r[part]['median_ms'], 3)
    return results


def print_rows(rows: Sequence[Dict], parts: Sequence[str]) -> None:
    for r in rows:
        head = f'{r["engine"]:>13} {r["precision"]} {r["network_input"]:>9} b{r["batch"]}'
        if 'skipped' in r:
            print(f'{head}: skipped ({r["skipped"]})')
            continue
        text = ', '.join(f'{p} p50 {r[p]["median_ms"]:.2f} ms p99 {r[p]["p99_ms"]:.2f} ms '
                         f'(x{r.get(p + "_speedup_vs_none", 1.0):.2f})' for p in parts)
        agree = r.get('label_agreement_vs_none')
        print(f'{head}: {text}; set-up {r["setup_s"]} s'
              + (f'; labels {100 * agree:.3f} % as none' if agree is not None else ''))


def sizes_arg(text: str) -> List[Tuple[int, int]]:
    return [network_size_arg(t) for t in text.split(',') if t]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--output', type=Path, default=Path('bench/results'),
                        help='folder for the JSON result (default bench/results)')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--model', help='model file (default: the bundled model)')
    parser.add_argument('--engines', help='comma-separated, from ' + ', '.join(ACCELERATIONS[1:])
                        + ' (default: all that run on the device)')
    parser.add_argument('--precisions', help='comma-separated (default fp32; on CUDA '
                        'fp32,fp16,bf16)')
    parser.add_argument('--sizes', type=sizes_arg, help='network input sizes WxH,... (default '
                        '256x128,512x256; on CUDA 512x256,1024x512)')
    parser.add_argument('--batches', default='1', help='batch sizes, comma-separated (e.g. 1,8)')
    parser.add_argument('--frame', type=size_arg, default=(2048, 1024), metavar='WxH',
                        help='camera frame size of the pipeline part (default 2048x1024)')
    parser.add_argument('--parts', default='forward,pipeline',
                        help='what to time: forward, pipeline or both (default)')
    parser.add_argument('--iterations', type=int, help='timed calls per engine and part')
    parser.add_argument('--warmup', type=int, default=3, help='uncounted calls first')
    parser.add_argument('--quick', action='store_true', help='few iterations, small sizes')
    parser.add_argument('--tag', default='', help='added to the JSON file name')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == 'cuda'
    engines = args.engines.split(',') if args.engines else list(
        CUDA_ENGINES if cuda else CPU_ENGINES)
    unknown = sorted(set(engines) - set(ACCELERATIONS))
    if unknown:
        raise SystemExit(f'bench_engines: unknown engines {unknown}')
    if 'none' not in engines:
        engines.insert(0, 'none')  # the reference of the ratios and the label agreement
    precisions = args.precisions.split(',') if args.precisions else (
        ['fp32', 'fp16', 'bf16'] if cuda else ['fp32'])
    sizes = args.sizes or ([(512, 256), (1024, 512)] if cuda else [(256, 128), (512, 256)])
    if args.quick and not args.sizes:
        sizes = sizes[:1]
    batches = [int(b) for b in args.batches.split(',')]
    parts = args.parts.split(',')
    iterations = args.iterations or (3 if args.quick else (100 if cuda else 20))
    warmup = min(args.warmup, 1) if args.quick else args.warmup
    model_path = args.model or str(default_model_path())
    frames = [Frame(scene(*args.frame, seed=7 + i), 'rgb8') for i in range(max(batches))]
    env = environment(device)
    report = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'model': model_path, 'iterations': iterations, 'warmup_iterations': warmup,
              'quick': args.quick, 'environment': env, 'results': []}
    for precision in precisions:
        for size in sizes:
            for batch in batches:
                rows = bench_group(model_path, device, engines, precision, size, batch, frames,
                                   warmup, iterations, parts)
                print_rows(rows, parts)
                report['results'].extend(rows)
    env['load_average_1m_at_end'] = round(os.getloadavg()[0], 2)
    name = f'engines-{device_slug(env)}-{datetime.date.today().isoformat()}'
    name += (f'-{args.tag}' if args.tag else '') + ('-quick' if args.quick else '')
    path = args.output / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + '\n')
    print(f'load average 1 min: {env["load_average_1m_at_start"]} at start, '
          f'{env["load_average_1m_at_end"]} at end; saved {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
