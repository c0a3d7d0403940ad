#!/usr/bin/env python3
"""
Benchmark the decode step for camera encodings: raw frame -> (1, 3, H, W) float RGB on a device.

    python bench/bench_color_convert.py --output bench/results [--device cpu|cuda] [--quick]

Per encoding and frame size, the median time of ``color_convert.to_rgb_tensor`` with each
backend the device offers (CPU: OpenCV and torch; CUDA: torch, upload included), next to the
rgb8 path of the pipeline (upload, channels first, float) as the baseline. Frames are a seg-synth
drive frame converted with ``color_convert.from_rgb``. Results are printed and saved with the
device and the 1-minute load average as ``<output>/color_convert-<device>-<date>.json``.
"""

# As in the node: the package sets OpenMP's wait policy before torch loads.
import seg_perception  # noqa: F401, I100

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import re
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from seg_perception.color_convert import from_rgb, to_rgb_tensor
from seg_perception.image_codec import CONVERTED
from seg_training.synth import render_frame

SIZES = ((1024, 512), (2048, 1024))  # (W, H)


def median_ms(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int,
              iterations: int) -> float:
    """Median wall time of ``fn`` in ms, the device synchronised after each call."""
    times = []
    for i in range(warmup + iterations):
        t0 = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 3)


def rgb8_baseline(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """Decode rgb8 as the pipeline does: upload, channels first, float."""
    return torch.from_numpy(image).to(device).permute(2, 0, 1).unsqueeze(0).float()


def run(device: torch.device, warmup: int, iterations: int,
        sizes: Sequence = SIZES) -> List[Dict]:
    backends = ['opencv', 'torch'] if device.type == 'cpu' else ['torch']
    rows = []
    for w, h in sizes:
        rgb = render_frame(3, (w, h), 'source')[0]  # (H, W, 3)
        rows.append({'size': f'{w}x{h}', 'encoding': 'rgb8', 'backend': 'upload',
                     'ms': median_ms(lambda: rgb8_baseline(rgb, device), device, warmup,
                                     iterations)})
        for encoding in CONVERTED:
            raw = from_rgb(rgb, encoding)
            for backend in backends:
                ms = median_ms(lambda: to_rgb_tensor(raw, encoding, device, backend), device,
                               warmup, iterations)
                rows.append({'size': f'{w}x{h}', 'encoding': encoding, 'backend': backend,
                             'ms': ms})
                print(f'{w}x{h} {encoding:12s} {backend:7s} {ms:8.2f} ms', flush=True)
    return rows


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    for line in Path('/proc/cpuinfo').read_text().splitlines():
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return platform.processor() or 'cpu'


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--output', type=Path, default=Path('bench/results'))
    p.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    p.add_argument('--quick', action='store_true', help='1024x512 only, few iterations')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    load_start = round(os.getloadavg()[0], 2)
    warmup, iterations = (2, 5) if args.quick else (3, 20)
    rows = run(device, warmup, iterations, SIZES[:1] if args.quick else SIZES)
    report = {'device': device_name(device), 'torch': torch.__version__,
              'threads': torch.get_num_threads(), 'iterations': iterations,
              'load_average_1m_at_start': load_start,
              'load_average_1m_at_end': round(os.getloadavg()[0], 2), 'results': rows}
    slug = re.sub(r'[^a-z0-9]+', '-', report['device'].lower()).strip('-')[:40]
    date = datetime.date.today().isoformat()
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f'color_convert-{slug}-{date}{"-quick" if args.quick else ""}.json'
    path.write_text(json.dumps(report, indent=2) + '\n')
    print(f'saved {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
