"""
What a model was trained on: the ``provenance`` entry of a model file, and its log lines.

``seg-train`` writes, into ``best.pt`` and ``last.pt``::

    provenance = {
        'datasets': [{'role': 'train' | 'val', 'dataset': 'cityscapes' | 'folder' | ...,
                      'root': str, 'split': str, 'synthetic': bool, 'images': int,
                      'image_sizes': [[w, h], ...]}, ...],
        'init': None | {'source': str, 'provenance': dict | None},  # --init, --pretrained-encoder
        'teacher': None | {'source': str, 'state_sha256': str,     # --teacher (distillation)
                           'class_map': {student class: [teacher classes]},
                           'provenance': dict | None},
        'epochs': int,              # epochs trained when the file was written
        'best_epoch': int, 'best_val_miou': float | None,  # validation at the network size
        'real_images': True | False | None,   # None: unknown (a parent without provenance)
    }

``seg-export --calibrate`` adds ``calibration``: one line on how the int8 calibration
(seg_training.nets.calibration) was made.

Every field may be null (absent or unknown) but not of another type: :func:`check_provenance`
refuses a record naming the field (``provenance.datasets[0].images``), and the model file
loaders call it. A record's text is someone else's: its log line goes through
:func:`seg_training.base.logtext.loggable` (escaped, bounded).

A dataset root is synthetic when it holds ``seg_synth.json``, the record ``seg-synth`` writes in
every output root (:data:`SYNTH_MARKER`); a folder of unlabelled images also when a folder above
it does. A model learnt from real images when a dataset, its starting model or its teacher
did. The official ERFNet Cityscapes model gets :func:`official_provenance`.
``python -m seg_training.nets.provenance MODEL --set RECORD.json`` adds a provenance record to an
existing project model file in place, its weights untouched (that is how
``models/erfnet_synth.pt`` got its record, ``models/erfnet_synth.provenance.json``).
"""

import argparse
import json
import logging
import math
import os
from pathlib import Path
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from PIL import Image

from seg_training.base.cli import HelpFormatter
from seg_training.base.dataset_kinds import UNLABELLED_DATASETS
from seg_training.base.logtext import loggable, MAX_LINE_CHARS
from seg_training.nets.checkpoint import (atomic_save, bare_state_dict, detect_format,
                                          ModelFileError, PUBLISHED, read_file)
from seg_training.nets.provenance_record import check_provenance, official_provenance

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SYNTH_MARKER = 'seg_synth.json'
MAX_SIZES = 20  # distinct image sizes listed per dataset


def dataset_is_synthetic(root: PathLike, within: bool = False) -> bool:
    """
    Tell whether seg-synth wrote ``root`` (it holds :data:`SYNTH_MARKER`).

    ``within``: also when a folder above ``root`` holds it (a sub-folder of seg-synth's output).
    """
    root = Path(root).absolute()
    return any((d / SYNTH_MARKER).is_file() for d in ([root, *root.parents] if within else [root]))


def image_sizes(paths: Iterable[PathLike]) -> List[List[int]]:
    """Distinct [w, h] of the images (headers only), most frequent first, at most MAX_SIZES."""
    counts: Dict[tuple, int] = {}
    for p in paths:
        try:
            with Image.open(p) as im:
                counts[im.size] = counts.get(im.size, 0) + 1
        except OSError:
            continue  # the dataset reports unreadable images itself when it loads them
    ranked = sorted(counts, key=lambda s: -counts[s])
    return [list(s) for s in ranked[:MAX_SIZES]]


def dataset_record(ds: Any, kind: str, role: str) -> Dict[str, Any]:
    """Describe one dataset split (a SegmentationDataset: ``root``, ``split``, ``samples``)."""
    return {'role': role, 'dataset': kind, 'root': str(ds.root), 'split': ds.split,
            'synthetic': dataset_is_synthetic(ds.root, within=kind in UNLABELLED_DATASETS),
            'images': len(ds.samples),
            'image_sizes': image_sizes(img for img, _ in ds.samples)}


def real_images(datasets: Sequence[Mapping], init: Optional[Mapping],
                teacher: Optional[Mapping] = None) -> Optional[bool]:
    """
    Tell whether training used real images; None if unknown.

    Real images: a real dataset, or a starting model (``init``) or teacher that saw some.
    """
    if any(not d.get('synthetic', True) for d in datasets):
        return True
    flags = [None if parent.get('provenance') is None
             else parent['provenance'].get('real_images')
             for parent in (init, teacher) if parent is not None]
    if True in flags:
        return True
    return None if None in flags else False


def teacher_record(source: str, state_sha256: str, class_map: Mapping[str, Sequence[str]],
                   provenance: Optional[Mapping]) -> Dict[str, Any]:
    """Make the ``teacher`` entry of a run distilled from the model file ``source``."""
    return {'source': source, 'state_sha256': state_sha256,
            'class_map': {k: list(v) for k, v in class_map.items()},
            'provenance': dict(provenance) if provenance else None}


def training_provenance(datasets: Sequence[Mapping], init: Optional[Mapping], epochs: int,
                        best_epoch: int, best_val_miou: Optional[float],
                        teacher: Optional[Mapping] = None) -> Dict[str, Any]:
    """Assemble the provenance entry of a model file written by seg-train."""
    miou = None if best_val_miou is None or not math.isfinite(best_val_miou) else best_val_miou
    return {'datasets': [dict(d) for d in datasets],
            'init': dict(init) if init is not None else None,
            'teacher': dict(teacher) if teacher is not None else None,
            'epochs': int(epochs), 'best_epoch': int(best_epoch),
            'best_val_miou': None if miou is None else float(miou),
            'real_images': real_images(datasets, init, teacher)}


def init_record(source: str, provenance: Optional[Mapping]) -> Dict[str, Any]:
    """Make the ``init`` entry of a run that started from ``source``."""
    return {'source': source, 'provenance': dict(provenance) if provenance else None}


def file_provenance(path: PathLike) -> Optional[Dict[str, Any]]:
    """Return the provenance recorded in (or known of) a model file; None if none."""
    obj = read_file(path)
    kind = detect_format(obj)
    if kind == 'project':
        prov = obj.get('provenance')
        if prov is None:
            return None
        try:
            check_provenance(prov)
        except ValueError as e:

            raise ModelFileError(f'{path}: {e}') from None
        return dict(prov)
    if kind == 'official':
        return official_provenance()
    if kind in PUBLISHED:
        return PUBLISHED[kind](bare_state_dict(obj), str(path)).provenance
    if kind == 'imagenet-encoder':
        return {'datasets': [{'role': 'train', 'dataset': 'imagenet', 'synthetic': False}],
                'init': None, 'real_images': True, 'source': str(path)}
    return None


def describe(provenance: Optional[Mapping]) -> str:
    """
    One line: datasets (real or synthetic, sizes), epochs, best validation mIoU.

    The record's text fields are shown through :func:`loggable` (escaped, each bounded).
    """
    if provenance is None:
        return 'training data not recorded in the model file'
    parts = []
    for d in provenance.get('datasets') or []:
        sizes = d.get('image_sizes') or []
        size = ', '.join('%dx%d' % tuple(s) for s in sizes[:3])
        size += ' ...' if len(sizes) > 3 else ''
        n = d.get('images')
        split = f":{loggable(d['split'])}" if d.get('split') else ''
        parts.append(f"{loggable(d.get('role', 'train'))} {loggable(d.get('dataset'))}{split} "
                     f"({'synthetic' if d.get('synthetic') else 'real'}"
                     f"{f', {n} images' if n is not None else ''}{f', {size}' if size else ''})")
    text = 'trained on ' + ('; '.join(parts) if parts else 'unknown data')
    init = provenance.get('init')
    if init:
        text += f"; started from {loggable(init.get('source'))}"
    teacher = provenance.get('teacher')
    if teacher:
        text += f"; distilled from {loggable(teacher.get('source'))}"
    if provenance.get('epochs') is not None:
        text += f"; {provenance['epochs']} epochs"
    if provenance.get('best_val_miou') is not None:
        text += f"; best val mIoU {provenance['best_val_miou']:.3f}"
    if provenance.get('source'):
        text += f"; published at {loggable(provenance['source'])}"
    if provenance.get('note'):
        text += f" ({loggable(provenance['note'])})"
    return text


def never_saw_real_images(provenance: Optional[Mapping]) -> bool:
    """Tell whether the record says so: every dataset synthetic, no real-image parent."""
    return provenance is not None and provenance.get('real_images') is False


def log_model(provenance: Optional[Mapping], model: str, logger: Any) -> None:
    """
    Log what ``model`` was trained on; warn when it has never seen a real image.

    A file that records nothing is logged as such (info): older project files predate the record.

    ``logger`` is a ``logging.Logger`` or an rclpy logger (both have info and warning).
    """
    model = loggable(model)
    logger.info(loggable(f'model {model}: {describe(provenance)}', MAX_LINE_CHARS))
    if never_saw_real_images(provenance):
        logger.warning(f'model {model} has never seen a real image (synthetic training data '
                       'only): expect poor results on camera frames; fine-tune it on real '
                       'frames or run a model trained on real frames (models/README.md)')


def set_provenance(path: PathLike, record: Mapping) -> None:
    """Write ``record`` as the provenance of the project model file ``path``, in place."""
    obj = read_file(path)
    if detect_format(obj) != 'project':
        raise ModelFileError(f'{path}: not a seg_perception model file; only those hold a '
                             'provenance record')
    for key in ('datasets', 'real_images'):
        if key not in record:
            raise ValueError(f'provenance record lacks {key!r}')
    obj['provenance'] = dict(record)
    atomic_save(obj, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='python -m seg_training.nets.provenance',
        description='Show the provenance of a model file, or set it from a JSON record '
        '(the weights are written back unchanged).')
    p.add_argument('model', help='model file')
    p.add_argument('--set', metavar='JSON', help='JSON file with the provenance record to store')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    try:
        if args.set:
            set_provenance(args.model, json.loads(Path(args.set).read_text(encoding='utf-8')))
            _logger.info('wrote the provenance of %s', args.model)
        prov = file_provenance(args.model)
    except (ModelFileError, ValueError, OSError) as e:
        sys.exit(f'provenance: error: {e}')
    print(json.dumps(prov, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
