"""
Test-time augmentation: what it gains (mIoU) and what it costs (time per image), side by side.

Writes a small seg-synth validation split (Cityscapes layout), scores a model on it with seg-eval
at the labels' size without TTA, with the mirrored run, and with the mirrored run at three
scales, then times each setting on a warm pipeline (labels only), and saves the JSON with the
device, versions and load.

    python bench/tta_gain.py --output bench/results [--model models/erfnet_synth.pt]
"""

import argparse
import json
import os
from pathlib import Path
import platform
import tempfile
import time

import numpy as np
import torch

from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_training.datasets.segmentation import read_image
from seg_training.evaluation.seg_eval import evaluate_model_file
from seg_training.nets.tta import parse_tta
from seg_training.synth import generate

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ('none', 'flip', 'flip,0.75,1,1.25')
LABELS = Outputs(labels=True, color=False, overlay=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=str(ROOT / 'models' / 'erfnet_synth.pt'))
    p.add_argument('--images', type=int, default=24, help='validation frames')
    p.add_argument('--size', default='512x256', help='frame size WxH')
    p.add_argument('--output', type=Path, default=ROOT / 'bench' / 'results')
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / 'val', layout='cityscapes', n_train=1, n_val=args.images,
                 size=tuple(int(v) for v in args.size.split('x')), seed=11, progress=False)
        frames = [Frame(read_image(p)) for p in
                  sorted((Path(tmp) / 'val' / 'leftImg8bit' / 'val').rglob('*.png'))]
        runs = {}
        for name in SETTINGS:
            tta = None if name == 'none' else parse_tta(name)
            report = evaluate_model_file(args.model, 'cityscapes', Path(tmp) / 'val', 'val',
                                         device='cpu', batch_size=4, tta=tta)
            # time per image on a warm pipeline (engine set-up for each input size done)
            pipe = SegmentationPipeline.from_file(args.model, device='cpu', tta=tta)
            pipe(frames[:1], LABELS)
            times = []
            for frame in frames:
                t0 = time.perf_counter()
                pipe([frame], LABELS)
                times.append(time.perf_counter() - t0)
            ms = 1e3 * float(np.median(times))
            runs[name] = {'miou': report['miou'], 'pixel_accuracy': report['pixel_accuracy'],
                          'ms_per_image_p50': round(ms, 1),
                          'forward_passes': 1 if tta is None else tta.runs}
            print(f'{name:18s} mIoU {report["miou"]:.4f}  {ms:.0f} ms/image (p50)')
    result = {
        'benchmark': 'tta_gain', 'model': str(args.model), 'images': args.images,
        'size': args.size, 'device': platform.processor() or platform.machine(),
        'cpu_count': os.cpu_count(), 'torch': torch.__version__,
        'load_average_before': load_before, 'load_average_after': os.getloadavg(),
        'runs': runs,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f'tta_gain-{time.strftime("%Y-%m-%d")}.json'
    path.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
