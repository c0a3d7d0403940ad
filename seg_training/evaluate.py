"""
seg-eval: a model file's metrics on a dataset split, as JSON.

The images are resized to the network input size (the model file's, or ``--size``) and
normalised with the model file's statistics, exactly as validation during training does, so the
mIoU matches the ``best_val_miou`` that ``seg-train`` recorded. The official
``erfnet_pretrained.pth`` is evaluated with its void output (index 19) left out of the metrics.

Example::

    seg-eval --model out/city/best.pt --dataset cityscapes --data-root data/city
    seg-eval --model best.pt --dataset folder --data-root mine --json eval.json --plots plots
"""

import argparse
import json
import logging
import math
import os
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader

from seg_training.checkpoint import load_model, ModelFileError
from seg_training.cli import network_size_arg, resolve_device
from seg_training.classes import ClassTable
from seg_training.data import build_dataset, check_datasets, DATASET_KINDS, DatasetError
from seg_training.files import atomic_path
from seg_training.metrics import evaluate
from seg_training.model import check_input_size
from seg_training.transforms import val_transform

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what and where."""


def evaluated_names(model_classes: ClassTable) -> List[str]:
    """Model class names without the void output (the classes a dataset must have)."""
    return [n for i, n in enumerate(model_classes.names) if i != model_classes.void_index]


def check_classes(model_classes: ClassTable, dataset_classes: ClassTable, model: str,
                  dataset: str) -> None:
    """
    Raise EvalError naming both lists unless the dataset's classes are the model's outputs.

    A void output is allowed only as the last index, so dataset class ``i`` is output ``i``.
    """
    void = model_classes.void_index
    ok = evaluated_names(model_classes) == list(dataset_classes.names)
    if void is not None and void != model_classes.num_classes - 1:
        ok = False
    if not ok:
        raise EvalError(
            f'the classes of dataset {dataset} {list(dataset_classes.names)} differ from those '
            f'of model {model} {list(model_classes.names)}'
            + (f' (void output at index {void})' if void is not None else '')
            + '; fine-tune the model on this class set first (seg-train --init)')


def _json_number(v: float) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _by_name(names: Sequence[str], values: Sequence[float], skip: Optional[int]) -> Dict:
    return {n: _json_number(v) for i, (n, v) in enumerate(zip(names, values)) if i != skip}


def evaluate_model_file(model_path: PathLike, dataset: str, data_root: PathLike,
                        split: str = 'val', device: str = 'auto', batch_size: int = 4,
                        size: Optional[Tuple[int, int]] = None, workers: int = 0,
                        amp: bool = False, max_samples: Optional[int] = None,
                        plots_dir: Optional[PathLike] = None,
                        progress: bool = False) -> Dict[str, Any]:
    """
    Evaluate a model file on a dataset split; returns the JSON-ready report.

    NaN metrics (classes absent from ground truth and prediction) are reported as None.
    """
    dev = resolve_device(device)
    model, info = load_model(model_path, dev)
    if info.encoder_only:
        _logger.warning('%s is an encoder-only model: logits at 1/8 resolution are upsampled',
                        model_path)
    input_size = tuple(size) if size else tuple(info.input_size)
    check_input_size(input_size[1], input_size[0])
    norm = info.normalization
    ds = build_dataset(dataset, data_root, split, val_transform(input_size, norm.mean, norm.std),
                       max_samples=max_samples)
    check_classes(info.classes, ds.classes, str(model_path), f'{dataset}:{data_root}')
    if len(ds) == 0:
        raise EvalError(f'{data_root}: split {split!r} has no samples')
    check_datasets([ds], workers=max(2, workers), progress=progress)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=dev.type == 'cuda')
    void = info.classes.void_index
    t0 = time.perf_counter()
    metrics, cm = evaluate(model, loader, info.num_classes, dev, void_index=void, amp=amp,
                           progress=progress)
    seconds = time.perf_counter() - t0
    names = info.classes.names
    report: Dict[str, Any] = {
        'miou': _json_number(metrics['miou']),
        'per_class_iou': _by_name(names, metrics['per_class_iou'], void),
        'pixel_accuracy': _json_number(metrics['pixel_accuracy']),
        'mean_accuracy': _json_number(metrics['mean_accuracy']),
        'per_class_accuracy': _by_name(names, metrics['per_class_accuracy'], void),
        'fw_iou': _json_number(metrics['fw_iou']),
        'mean_dice': _json_number(metrics['mean_dice']),
        'per_class_dice': _by_name(names, metrics['dice'], void),
        'num_images': len(ds),
        'num_pixels': metrics['num_pixels'],
        'model': str(model_path),
        'model_format': info.source_format,
        'dataset': dataset,
        'data_root': str(data_root),
        'split': split,
        'input_size': list(input_size),
        'device': str(dev),
        'seconds': round(seconds, 3),
        'confusion_matrix': cm.matrix.cpu().tolist(),
    }
    if plots_dir is not None:
        written = write_plots(plots_dir, info.classes, metrics, cm.matrix)
        report['plots'] = [str(p) for p in written]
    return report


def write_plots(out_dir: PathLike, classes: ClassTable, metrics: Dict[str, Any],
                matrix: torch.Tensor) -> List[Path]:
    """Per-class IoU bars and the confusion matrix as PNGs in ``out_dir``."""
    from seg_training.plots import plot_confusion, plot_per_class_iou

    out = Path(out_dir)
    void = classes.void_index
    keep = [i for i in range(classes.num_classes) if i != void]
    names = [classes.names[i] for i in keep]
    ious = [metrics['per_class_iou'][i] for i in keep]
    m = matrix.cpu()[keep][:, keep]  # void has no ground truth; its column is a miss
    return [plot_per_class_iou(names, ious, out / 'per_class_iou.png'),
            plot_confusion(m, names, out / 'confusion_matrix.png')]


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + '\n')
    return Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='seg-eval', description='Evaluate a segmentation model file on a dataset split '
        '(mIoU, per-class IoU, accuracies, frequency-weighted IoU, Dice) and print JSON.')
    p.add_argument('--model', required=True, help='project model file or erfnet_pretrained.pth')
    p.add_argument('--dataset', required=True, choices=DATASET_KINDS)
    p.add_argument('--data-root', required=True, help='dataset root folder')
    p.add_argument('--split', default='val')
    p.add_argument('--json', help='also write the JSON report to this file')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (default auto)')
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--size', type=network_size_arg,
                   help='network input WxH (default: the model file\'s input size)')
    p.add_argument('--plots', help='folder for per_class_iou.png and confusion_matrix.png')
    p.add_argument('--workers', type=int, default=2, help='DataLoader worker processes')
    p.add_argument('--amp', action='store_true', help='autocast on CUDA')
    p.add_argument('--max-samples', type=int, help='evaluate only this many samples')
    p.add_argument('--full-report', action='store_true',
                   help='print the confusion matrix too (always in the --json file)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.batch_size < 1:
        sys.exit(f'seg-eval: error: --batch-size must be positive, got {args.batch_size}')
    try:
        report = evaluate_model_file(
            args.model, args.dataset, args.data_root, args.split, args.device, args.batch_size,
            args.size, max(0, args.workers), args.amp, args.max_samples, args.plots,
            progress=True)
    except (ModelFileError, DatasetError, EvalError, FileNotFoundError) as e:
        sys.exit(f'seg-eval: error: {e}')
    if args.json:
        write_json(report, args.json)
        _logger.info('wrote %s', args.json)
    shown = report if args.full_report else {k: v for k, v in report.items()
                                             if k != 'confusion_matrix'}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
