#!/usr/bin/env python3
r"""
The onnxruntime_int8 engine against onnxruntime fp32: speed and label agreement on real frames.

    python bench/bench_int8.py --model models/erfnet_synth.pt --calibrate FRAMES_DIR \
        --frames TEST_DIR [--sizes 512x256,1024x512] [--iterations 20] [--output bench/results]

For each network size the model is calibrated on ``--calibrate`` (``seg-export --calibrate``'s
code, written to a temporary copy: the model file is not touched) unless it already carries a
calibration made at that size (``--use-stored``). Both engines (seg_perception.engines) are
then built from that file, as the node builds them, and run on the frames of ``--frames``
(images that were not calibrated on): the share of pixels whose label is the same, and the
forward time of each, taken in turns (one call of each, then the next round) so a busy machine
slows both alike and their ratio stays comparable. Results (median, p90, p99 in ms, the speed-up
of the medians, device, versions, the 1-minute load average at start and end) are printed and
saved as ``<output>/int8-<device>-<date>.json``.
"""

# First, as in the node: the package sets OpenMP's wait policy before torch loads.
import seg_perception  # noqa: F401, I100

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

from bench_inference import base_environment, summarize, write_report  # this folder
from seg_perception.engines import build_engine
from seg_training import export as seg_export
from seg_training.base.cli import size_arg
from seg_training.nets.checkpoint import load_model

CPU = torch.device('cpu')


def frames_at(model_path: str, folder: str, size, count: int) -> List[torch.Tensor]:
    """Return up to ``count`` frames of ``folder`` as network inputs (1, 3, h, w)."""
    _, info = load_model(model_path)
    prep = info.preprocessing(size)
    paths = seg_export.calibration_frames(folder)
    picked = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(count, len(paths)))]
    return [prep.image(seg_export._read_rgb(p))[None] for p in picked]


def run_size(args: argparse.Namespace, model_path: str, size, tmp: Path) -> Dict:
    """Calibrate (unless stored), build both engines, compare labels and time them."""
    w, h = size
    t0 = time.perf_counter()
    if args.use_stored:
        calibrated = Path(model_path)
    else:
        calibrated, _ = seg_export.calibrate_model(
            model_path, args.calibrate, tmp / f'{Path(model_path).stem}_{w}x{h}.pt', size,
            args.calibration_frames, args.method)
    calibrate_s = time.perf_counter() - t0
    model, info = load_model(calibrated)
    record = info.calibration
    engines = {}
    for name in ('onnxruntime', 'onnxruntime_int8'):
        t0 = time.perf_counter()
        engines[name] = build_engine(load_model(calibrated)[0], info, CPU, 'fp32', name,
                                     source=str(calibrated), input_size=size)
        engines[name](torch.zeros(1, 3, h, w))  # the session for this size
        engines[name + '_setup_s'] = round(time.perf_counter() - t0, 2)
    fp32, int8 = engines['onnxruntime'], engines['onnxruntime_int8']
    inputs = frames_at(str(calibrated), args.frames, size, args.test_frames)
    same = total = 0
    for x in inputs:
        a, b = fp32(x).argmax(1), int8(x).argmax(1)  # (1, h, w)
        same += int((a == b).sum())
        total += a.numel()
    times: Dict[str, List[float]] = {'onnxruntime': [], 'onnxruntime_int8': []}
    x = inputs[0]
    for name in times:  # warm-up
        engines[name](x)
    for i in range(args.iterations):
        x = inputs[i % len(inputs)]
        for name in times:
            t0 = time.perf_counter()
            engines[name](x)
            times[name].append(time.perf_counter() - t0)
    stats = {name: summarize(t) for name, t in times.items()}
    return {
        'model': model_path, 'network_input': f'{w}x{h}',
        'calibration': {k: record.get(k) for k in ('method', 'input_size', 'frames', 'agreement',
                                                   'speedup', 'op_types')},
        'calibrate_s': round(calibrate_s, 1),
        'setup_s': {n: engines[n + '_setup_s'] for n in times},
        'test_frames': {'folder': args.frames, 'count': len(inputs)},
        'label_agreement': round(same / total, 5),
        'forward': stats,
        'speedup_median': round(stats['onnxruntime']['median_ms']
                                / stats['onnxruntime_int8']['median_ms'], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', action='append', required=True, help='model file (repeatable)')
    p.add_argument('--calibrate', help='frames to calibrate on (not the test frames)')
    p.add_argument('--use-stored', action='store_true',
                   help='use the calibration stored in the model file')
    p.add_argument('--frames', required=True, help='test frames (agreement and timing)')
    p.add_argument('--sizes', default='512x256,1024x512',
                   help='network sizes WxH, comma separated')
    p.add_argument('--calibration-frames', type=int, default=seg_export.DEFAULT_FRAMES)
    p.add_argument('--method', default='minmax', help='calibration method')
    p.add_argument('--test-frames', type=int, default=16)
    p.add_argument('--iterations', type=int, default=20)
    p.add_argument('--output', default=str(Path(__file__).resolve().parent / 'results'))
    p.add_argument('--tag', default='', help='suffix of the result file name')
    args = p.parse_args()
    if not args.use_stored and not args.calibrate:
        p.error('give --calibrate FRAMES_DIR or --use-stored')
    import onnxruntime

    env = {**base_environment(CPU), 'onnxruntime': onnxruntime.__version__}
    results = []
    with tempfile.TemporaryDirectory(prefix='bench_int8.') as tmp:
        for model_path in args.model:
            for size in (size_arg(s) for s in args.sizes.split(',')):
                res = run_size(args, model_path, size, Path(tmp))
                print(json.dumps(res), flush=True)
                results.append(res)
    env['load_average_1m_at_end'] = round(os.getloadavg()[0], 2)
    report = {'environment': env, 'results': results,
              'command': ' '.join(sys.argv)}
    write_report(report, args.output, 'int8', args.tag)
    return 0


if __name__ == '__main__':
    sys.exit(main())
