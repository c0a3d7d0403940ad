"""
seg-eval: a model file's metrics on a dataset split, as JSON.

Two ways to score (``--eval-size``):

* ``label`` (default): at the labels' own resolution, as the Cityscapes benchmark scores. Each
  image goes through the node's own pipeline (``seg_perception.pipeline.SegmentationPipeline``:
  the model file's network-input step, ERFNet, labels brought to the image size exactly as the
  node brings them to the camera size), so the predictions are seg-predict's labels.
* ``network``: at the network input size: images through the same network-input step, masks
  resized with nearest neighbour. This is what validation in ``seg-train`` computes, so the mIoU
  matches the ``best_val_miou`` the run recorded.

Images are normalised with the model file's statistics. The official ``erfnet_pretrained.pth``
is evaluated with its void output (index 19) left out of the metrics.

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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from seg_training.base.classes import ClassTable, IGNORE_INDEX
from seg_training.base.cli import HelpFormatter, resolve_device
from seg_training.base.files import write_json
from seg_training.base.yaml_reader import ConfigError
from seg_training.datasets.build import (build_dataset, check_datasets, DATASET_KINDS,
                                         loader_worker_init)
from seg_training.datasets.class_map import build_class_map
from seg_training.datasets.segmentation import DatasetError
from seg_training.datasets.transforms import ValTransform
from seg_training.evaluation.metrics import ConfusionMatrix, evaluate
from seg_training.nets import architectures
from seg_training.nets.checkpoint import load_model, ModelFileError, ModelInfo
from seg_training.nets.options import network_size_arg, tta_arg
from seg_training.nets.tta import TTA, TTAModel

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


EVAL_SIZES = ('label', 'network')
# How ``--eval-size label`` brings predictions to the label size: the node's pipeline does.
LABEL_METHOD = ('seg_perception.pipeline.SegmentationPipeline labels at the image size, as the '
                'node publishes them')


def _raw_batches(ds: Any, batch_size: int, workers: int) -> DataLoader:
    """Batches of raw (RGB (H, W, 3) uint8, mask (H, W) uint8) pairs, as lists."""
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=list, worker_init_fn=loader_worker_init())


def iter_label_predictions(pipeline: Any, ds: Any, batch_size: int = 4, workers: int = 0,
                           progress: bool = False
                           ) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """
    Yield ``(sample index, labels (H, W) uint8, mask (H, W) uint8)`` at each label's size.

    ``pipeline`` is a SegmentationPipeline; ``ds`` a dataset without transform (raw pairs).
    """
    from seg_perception.pipeline import Frame, Outputs

    outputs = Outputs(labels=True, color=False, overlay=False)
    batches = _raw_batches(ds, batch_size, workers)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc='eval', unit='batch', leave=False)
    index = 0
    for batch in batches:
        results = pipeline([Frame(np.ascontiguousarray(img), 'rgb8') for img, _ in batch],
                           outputs)
        for (_, mask), res in zip(batch, results):
            yield index, res.labels, mask
            index += 1


def _evaluate_at_label_size(model: torch.nn.Module, info: ModelInfo, ds: Any,
                            input_size: Tuple[int, int], dev: torch.device, batch_size: int,
                            workers: int, amp: bool, progress: bool, tta: Optional[TTA] = None,
                            scored: Optional[ClassTable] = None,
                            lookup: Optional[np.ndarray] = None, accelerate: str = 'auto',
                            source: str = 'MODEL'
                            ) -> Tuple[Dict[str, Any], ConfusionMatrix, List[List[int]], str]:
    """
    Score the pipeline's labels at each mask's size: (metrics, cm, sizes, engine that ran).

    ``lookup`` (a class map's) turns each predicted model class into a class of ``scored``;
    without one ``scored`` is the model's table.
    """
    from seg_perception.pipeline import SegmentationPipeline

    if info.encoder_only:
        raise EvalError('an encoder-only model (1/8 resolution) does not run in the node; '
                        'score it with --eval-size network')
    precision = 'fp16' if amp and dev.type == 'cuda' else 'fp32'
    pipeline = SegmentationPipeline(model, info, device=str(dev), precision=precision,
                                    input_size=input_size, warmup=False, tta=tta,
                                    accelerate=accelerate, source=source)
    metrics, cm, sizes = score_pipeline(pipeline, ds, scored or info.classes, lookup,
                                        batch_size, workers, progress)
    return metrics, cm, sizes, pipeline.engine.describe()


def score_pipeline(pipeline: Any, ds: Any, scored: ClassTable,
                   lookup: Optional[np.ndarray] = None, batch_size: int = 4, workers: int = 0,
                   progress: bool = False
                   ) -> Tuple[Dict[str, Any], ConfusionMatrix, List[List[int]]]:
    """
    Score a SegmentationPipeline's labels on ``ds`` at each mask's size: (metrics, cm, sizes).

    ``lookup`` (a class map's) turns each predicted model class into a class of ``scored``.
    """
    cm = ConfusionMatrix(scored.num_classes)
    sizes: List[List[int]] = []
    for _, labels, mask in iter_label_predictions(pipeline, ds, batch_size, workers, progress):
        if lookup is not None:
            labels = lookup[labels]
        cm.update(torch.from_numpy(labels), torch.from_numpy(mask))
        size = [int(mask.shape[1]), int(mask.shape[0])]
        if size not in sizes:
            sizes.append(size)
    metrics = cm.compute(scored.void_index)
    _logger.info('evaluated %d pixels at the label size: mIoU %.4f, pixel accuracy %.4f',
                 metrics['num_pixels'], metrics['miou'], metrics['pixel_accuracy'])
    return metrics, cm, sizes


def evaluate_model_file(model_path: PathLike, dataset: str, data_root: PathLike,
                        split: str = 'val', device: str = 'auto', batch_size: int = 4,
                        size: Optional[Tuple[int, int]] = None, workers: int = 0,
                        amp: bool = False, max_samples: Optional[int] = None,
                        plots_dir: Optional[PathLike] = None,
                        progress: bool = False, eval_size: str = 'label',
                        tta: Optional[TTA] = None,
                        class_map: Optional[PathLike] = None,
                        accelerate: str = 'auto') -> Dict[str, Any]:
    """
    Evaluate a model file on a dataset split; returns the JSON-ready report.

    ``eval_size`` 'label' scores at the labels' own size, 'network' at the network input size
    (see the module docstring); ``tta`` averages mirrored and rescaled runs. NaN metrics
    (classes absent from ground truth and prediction) are reported as None. ``class_map`` (a
    :mod:`seg_training.datasets.class_map` file: dataset class -> model classes) scores a model
    trained on other classes, e.g. a Cityscapes model on CamVid: each predicted class counts as the
    dataset class it maps to, a class no dataset class takes as a miss. ``accelerate`` picks the
    node's engine (seg_perception.engines) that makes the labels at the label size.
    """
    if eval_size not in EVAL_SIZES:
        raise EvalError(f'eval size {eval_size!r} not in {list(EVAL_SIZES)}')
    dev = resolve_device(device)
    model, info = load_model(model_path, dev)
    if info.encoder_only:
        _logger.warning('%s is an encoder-only model: logits at 1/8 resolution are upsampled',
                        model_path)
    input_size = tuple(size) if size else tuple(info.input_size)
    info.check_input_size(input_size[0], input_size[1])
    prep = info.preprocessing(input_size)
    transform = None if eval_size == 'label' else ValTransform(prep)
    ds = build_dataset(dataset, data_root, split, transform, max_samples=max_samples)
    scored, lookup, mapping = info.classes, None, None
    if class_map is None:
        check_classes(info.classes, ds.classes, str(model_path), f'{dataset}:{data_root}')
    else:
        scored, lookup, mapping = mapped_classes(class_map, info.classes, ds.classes,
                                                 str(model_path), f'{dataset}:{data_root}')
        if eval_size != 'label':
            raise EvalError('--class-map scores the labels as the node publishes them: use '
                            '--eval-size label')
    if len(ds) == 0:
        raise EvalError(f'{data_root}: split {split!r} has no samples')
    check_datasets([ds], workers=max(2, workers), progress=progress)
    void = scored.void_index
    t0 = time.perf_counter()
    if eval_size == 'label':
        metrics, cm, sizes, engine = _evaluate_at_label_size(
            model, info, ds, input_size, dev, batch_size, workers, amp, progress, tta, scored,
            lookup, accelerate, str(model_path))
        resolution = {'eval_size': 'label', 'label_sizes': sizes, 'method': LABEL_METHOD}
    else:
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=dev.type == 'cuda', worker_init_fn=loader_worker_init())
        net = (model if tta is None
               else TTAModel(model, tta, architectures.get(info.arch).stride))
        metrics, cm = evaluate(net, loader, info.num_classes, dev, void_index=void, amp=amp,
                               progress=progress)
        engine = f'none ({"fp16 autocast" if amp and dev.type == "cuda" else "fp32"})'
        resolution = {'eval_size': 'network', 'label_sizes': [list(input_size)],
                      'method': 'argmax at the network input size; masks resized with '
                                'nearest neighbour'}
    seconds = time.perf_counter() - t0
    names = scored.names
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
        **resolution,
        'preprocess': prep.to_dict(),
        'tta': tta.describe() if tta else None,
        'class_map': mapping,
        'device': str(dev),
        'accelerate': accelerate,
        'engine': engine,  # what ran: --accelerate auto resolved, with its precision
        'seconds': round(seconds, 3),
        'confusion_matrix': cm.matrix.cpu().tolist(),
    }
    if plots_dir is not None:  # a plot that fails (a full disk, ...) costs only itself
        written, failed = write_plots(plots_dir, scored, metrics, cm.matrix)
        if written:
            report['plots'] = [str(p) for p in written]
        if failed:
            report['plots_error'] = '; '.join(failed)
    return report


UNMAPPED = '(no class)'  # scored class of predictions a class map leaves out


def mapped_classes(path: PathLike, model_classes: ClassTable, dataset_classes: ClassTable,
                   model: str, dataset: str
                   ) -> Tuple[ClassTable, np.ndarray, Dict[str, List[str]]]:
    """
    Return (scored table, model -> scored lookup, the map) of a class-map file.

    The scored table is the dataset's classes plus a void class that takes every prediction of a
    model class the map leaves out: such pixels count as misses of their true class.
    """
    try:
        cmap = build_class_map(dataset_classes, model_classes, path, model, dataset)
    except ConfigError as e:
        raise EvalError(str(e)) from None
    if dataset_classes.void_index is not None:
        raise EvalError(f'{dataset}: a dataset with a void class cannot be scored through a '
                        'class map')
    scored = ClassTable(dataset_classes.names + (UNMAPPED,),
                        dataset_classes.colors + ((0, 0, 0),), dataset_classes.num_classes)
    lookup = cmap.lookup()
    lookup[lookup == IGNORE_INDEX] = dataset_classes.num_classes
    _logger.info('class map %s: %s; model classes scored as misses: %s', path, cmap.to_dict(),
                 cmap.dropped)
    return scored, lookup, cmap.to_dict()


def write_plots(out_dir: PathLike, classes: ClassTable, metrics: Dict[str, Any],
                matrix: torch.Tensor) -> Tuple[List[Path], List[str]]:
    """
    Per-class IoU bars and the confusion matrix as PNGs in ``out_dir``.

    Returns the plots written and, for each one that failed, what failed (logged as well).
    """
    from seg_training.evaluation.plots import draw_safely, plot_confusion, plot_per_class_iou

    out = Path(out_dir)
    void = classes.void_index
    keep = [i for i in range(classes.num_classes) if i != void]
    names = [classes.names[i] for i in keep]
    ious = [metrics['per_class_iou'][i] for i in keep]
    m = matrix.cpu()[keep][:, keep]  # void has no ground truth; its column is a miss
    plots = {out / 'per_class_iou.png': lambda png: plot_per_class_iou(names, ious, png),
             out / 'confusion_matrix.png': lambda png: plot_confusion(m, names, png)}
    written: List[Path] = []
    failed: List[str] = []
    for png, draw in plots.items():
        error = draw_safely(png, lambda: draw(png))
        if error is None:
            written.append(png)
        else:
            failed.append(error)
    return written, failed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='seg-eval', description='Evaluate a segmentation model file on a dataset split '
        '(mIoU, per-class IoU, accuracies, frequency-weighted IoU, Dice) and print JSON.')
    p.add_argument('--model', required=True,
                   help='a project model file or a published ERFNet, ESPNetv2 or ESPNet file')
    p.add_argument('--dataset', required=True, choices=DATASET_KINDS, help='dataset layout')
    p.add_argument('--data-root', required=True, help='dataset root folder')
    p.add_argument('--split', default='val', help='dataset split to score')
    p.add_argument('--json', help='also write the JSON report to this file')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--batch-size', type=int, default=4, help='images per forward pass')
    p.add_argument('--size', type=network_size_arg,
                   help='network input WxH (default: the model file\'s input size)')
    p.add_argument('--eval-size', choices=EVAL_SIZES, default='label',
                   help='score at the labels\' own size, predictions made by the node\'s '
                   'pipeline (label, the default, as the Cityscapes evaluator), or at the '
                   'network input size with nearest-resized masks (network, as seg-train '
                   'validates)')
    p.add_argument('--plots', help='folder for per_class_iou.png and confusion_matrix.png')
    p.add_argument('--workers', type=int, default=2, help='DataLoader worker processes')
    p.add_argument('--amp', action='store_true', help='autocast on CUDA')
    p.add_argument('--tta', type=tta_arg, default=None, metavar='flip[,S,...]',
                   help='test-time augmentation: softmax averaged over a mirrored run ("flip") '
                   'and/or input scales, e.g. flip,0.75,1,1.25 (default: off)')
    p.add_argument('--max-samples', type=int, help='evaluate only this many samples')
    p.add_argument('--class-map', metavar='YAML', default=None,
                   help='score a model trained on other classes: YAML "dataset_class: '
                   '[model_class, ...]" (config/class_maps/), classes not listed match by name')
    from seg_perception.engines import ACCELERATIONS

    p.add_argument('--accelerate', default='auto', choices=ACCELERATIONS,
                   help='engine that makes the labels at the label size, as the node\'s '
                   'parameter (seg_perception/engines.py)')
    p.add_argument('--full-report', action='store_true',
                   help='print the confusion matrix too (always in the --json file)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from seg_perception.engines import EngineError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.batch_size < 1:
        sys.exit(f'seg-eval: error: --batch-size must be positive, got {args.batch_size}')
    try:
        report = evaluate_model_file(
            args.model, args.dataset, args.data_root, args.split, args.device, args.batch_size,
            args.size, max(0, args.workers), args.amp, args.max_samples, args.plots,
            progress=True, eval_size=args.eval_size, tta=args.tta, class_map=args.class_map,
            accelerate=args.accelerate)
    except (ModelFileError, DatasetError, EvalError, FileNotFoundError, EngineError) as e:
        sys.exit(f'seg-eval: error: {e}')
    # A report that cannot be saved is still printed: an evaluation is not lost to a full disk.
    errors = [f'plots: {report["plots_error"]}'] if 'plots_error' in report else []
    if args.json:
        try:
            write_json(report, args.json)
        except OSError as e:
            errors.append(f'--json {args.json}: {e}')
        else:
            _logger.info('wrote %s', args.json)
    shown = report if args.full_report else {k: v for k, v in report.items()
                                             if k != 'confusion_matrix'}
    print(json.dumps(shown, indent=2))
    for e in errors:
        print(f'seg-eval: error: {e}', file=sys.stderr)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
