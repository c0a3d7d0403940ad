#!/usr/bin/env python3
"""
Benchmark the up-front dataset check of seg-train and seg-eval against one pass of training data.

    python bench/bench_data_check.py [--samples 24] [--size 2048x1024] [--threads 1 2]
                                     [--output bench/results]

Writes a folder dataset of ``--samples`` Cityscapes-sized PNG images with index masks into a
temporary folder, then times, side by side in one run:

* ``check``: :func:`seg_training.datasets.build.check_datasets` (each image and mask decoded
  once, plus the mask counts that give the class weights) with each ``--threads`` count;
* ``label_histogram``: the masks alone, as class weighting read them before the check existed;
* ``load``: ``dataset.load`` of every sample in one thread, what one epoch's DataLoader decodes.

Prints and saves ``<output>/data_check-<date>.json`` with the 1-minute load average before and
after: on a shared machine compare only the ratios of one run.
"""

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence

import cv2
import numpy as np
import yaml

from seg_training.base.classes import CUSTOM8
from seg_training.base.cli import size_arg
from seg_training.datasets.build import build_dataset, check_datasets


def write_dataset(root: Path, n: int, size) -> None:
    """``n`` noisy PNG images and 8-class index masks of ``size`` (W, H) in the folder layout."""
    w, h = size
    rng = np.random.default_rng(0)
    entries = [{'name': name, 'color': list(color)}
               for name, color in zip(CUSTOM8.names, CUSTOM8.colors)]
    root.mkdir(parents=True)
    (root / 'classes.yaml').write_text(yaml.safe_dump({'classes': entries}))
    for d in ('images/train', 'masks/train'):
        (root / d).mkdir(parents=True)
    for i in range(n):
        mask = np.repeat(np.arange(8, dtype=np.uint8), h // 8 + 1)[:h, None].repeat(w, 1)
        image = np.clip(mask[..., None].astype(np.int16) * 25
                        + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'images/train' / f'f{i:04d}.png'), image)
        cv2.imwrite(str(root / 'masks/train' / f'f{i:04d}.png'), mask)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--samples', type=int, default=24)
    p.add_argument('--size', type=size_arg, default=(2048, 1024), help='WxH')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--output', type=Path, default=Path('bench/results'))
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'data'
        write_dataset(root, args.samples, args.size)
        ds = build_dataset('folder', root, 'train')
        ds.load(0)  # warm the page cache and the decoders
        seconds: Dict[str, float] = {}
        for n in args.threads:
            seconds[f'check_{n}_threads'] = timed(lambda: check_datasets([ds], workers=n))
        seconds['label_histogram_1_thread'] = timed(lambda: ds.label_histogram(workers=1))
        seconds['load_1_thread'] = timed(lambda: [ds.load(i) for i in range(len(ds))])
    report = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'host': platform.node(), 'cpu_count': os.cpu_count(), 'python': platform.python_version(),
        'samples': args.samples, 'size': '{}x{}'.format(*args.size),
        'seconds': {k: round(v, 3) for k, v in seconds.items()},
        'ms_per_sample': {k: round(1000 * v / args.samples, 1) for k, v in seconds.items()},
        'check_vs_load': {k: round(v / seconds['load_1_thread'], 2)
                          for k, v in seconds.items() if k.startswith('check')},
        'loadavg_1min': [load_before, os.getloadavg()[0]],
    }
    print(json.dumps(report, indent=2))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f'data_check-{datetime.date.today().isoformat()}.json'
    path.write_text(json.dumps(report, indent=2) + '\n')
    print(f'wrote {path}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
