r"""
seg-synth: procedural driving scenes written as a Cityscapes-layout or a folder dataset.

Examples::

    seg-synth --layout cityscapes --out data/synth_cs --train 200 --val 50 --size 256x128 --seed 0
    seg-synth --layout folder --classes custom8 --out data/synth_c8 --train 234 --val 60 \\
        --size 256x128 --seed 1

Scenes are drawn with numpy and OpenCV (see :mod:`seg_training.synth.scene`): a road in
perspective with lane marks, kerbs and sidewalks, facades with windows, sky with clouds, trees
and hedges, poles, signs and traffic lights, cars, vans and trucks, pedestrians, cast shadows,
haze, fog and rain, with camera height, pitch, focal length, horizon and roll varying from drive
to drive. Each drive is a short sequence (``--sequence-length`` frames, ``--frame-stride`` x 0.1 s
apart) in which the car moves along the road. Labels are exact: the same polygons are filled into
the image and into the label map in the same order.

Layouts
    ``cityscapes``::

        leftImg8bit/<split>/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png
        gtFine/<split>/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png
        gtFine/<split>/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelTrainIds.png

    with Cityscapes label ids (road 7, sidewalk 8, building 11, pole 17, traffic light 19,
    traffic sign 20, vegetation 21, terrain 22, sky 23, person 24, car 26, truck 27, ego vehicle
    1 for the bonnet) and train ids from ``cityscapesscripts``' table. Train and val use
    different cities.

    ``folder``::

        classes.yaml
        images/<split>/<city>_<seq:06d>_<frame:06d>.png
        masks/<split>/<city>_<seq:06d>_<frame:06d>.png

    ``classes.yaml`` (what :func:`seg_training.datasets.build.read_classes_yaml` reads)::

        classes:
          - {name: road, color: [128, 64, 128], values: [0]}
          ...
        mask_format: index      # or palette / rgb
        ignore_value: 255       # [0, 0, 0] for rgb masks

    ``--mask-format index`` writes single-channel masks (value i = class i, 255 = ignore),
    ``palette`` writes the same indices as a PNG palette image (mode P) whose colours are the
    class colours, ``rgb`` writes class colours (values are then ``[r, g, b]`` lists, black is
    ignore). ``--classes custom8`` maps the scene's label ids to the 8 classes road, sidewalk,
    building, pole (poles, traffic signs and lights), vegetation (trees, hedges, terrain), sky,
    person, vehicle (cars and trucks); the ego vehicle is ignored. ``--classes cityscapes``
    writes the 19 train ids.

Domains
    ``source`` (default of the cityscapes layout) looks like Cityscapes; ``target`` (default of
    the folder layout) is another car and another place: a high, pitched, wide-angle camera with
    vignetting and noise, darker asphalt, other facades, overcast, fog, dusk or rain. See
    :mod:`seg_training.synth.style`.

The same arguments give the same bytes, whatever ``--workers``. A ``seg_synth.json`` at the root
records the arguments and the class pixel fractions.
"""

import argparse
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
import json
import logging
import multiprocessing
import os
from pathlib import Path
import shutil
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from seg_training.base.classes import (ClassTable, cityscapes_label_to_train_id, cityscapes_table,
                                       CUSTOM8, IGNORE_INDEX)
from seg_training.base.cli import HelpFormatter, parse_size
from seg_training.synth.scene import (BUILDING, CAR, Drive, PERSON, POLE, render_frame, ROAD,
                                      sample_drive, SIDEWALK, SKY, TERRAIN, TRAFFIC_LIGHT,
                                      TRAFFIC_SIGN, TRUCK, VEGETATION)
from seg_training.synth.style import DOMAINS, VIEWS

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
LAYOUTS = ('cityscapes', 'folder')
CLASS_SETS = ('cityscapes', 'custom8')
MASK_FORMATS = ('index', 'palette', 'rgb')
SPLITS = ('train', 'val')
# Cities of each split (Cityscapes' own names; the scenes are made up).
CITIES = {'train': ('aachen', 'bremen', 'darmstadt', 'erfurt', 'hamburg', 'jena', 'stuttgart',
                    'zurich'),
          'val': ('frankfurt', 'lindau', 'munster')}
_OUTPUTS = ('leftImg8bit', 'gtFine', 'images', 'masks', 'classes.yaml', 'seg_synth.json')

# Scene label ids -> custom8 class names; anything else (ego vehicle, unlabelled) is ignored.
CUSTOM8_FROM_LABEL_ID: Dict[int, str] = {
    ROAD: 'road', SIDEWALK: 'sidewalk', BUILDING: 'building', POLE: 'pole',
    TRAFFIC_LIGHT: 'pole', TRAFFIC_SIGN: 'pole', VEGETATION: 'vegetation', TERRAIN: 'vegetation',
    SKY: 'sky', PERSON: 'person', CAR: 'vehicle', TRUCK: 'vehicle'}


def label_lut(classes: str) -> Tuple[ClassTable, np.ndarray]:
    """
    Class table and (256,) uint8 lookup from scene label ids to its indices (255 = ignore).

    ``classes`` is 'cityscapes' (19 train ids, cityscapesscripts' table) or 'custom8'.
    """
    if classes == 'cityscapes':
        return cityscapes_table(), cityscapes_label_to_train_id()
    if classes == 'custom8':
        lut = np.full(256, IGNORE_INDEX, np.uint8)
        for label_id, name in CUSTOM8_FROM_LABEL_ID.items():
            lut[label_id] = CUSTOM8.index(name)
        return CUSTOM8, lut
    raise ValueError(f'unknown class set {classes!r}; choose one of {list(CLASS_SETS)}')


@dataclass(frozen=True)
class _Job:
    """One drive to render and write."""

    split: str
    city: str
    sequence: int          # index of the drive within its city
    seed: int              # drive seed
    frames: Tuple[int, ...]


@dataclass(frozen=True)
class _Config:
    out: str
    layout: str
    classes: str
    domain: str
    size: Tuple[int, int]
    mask_format: str
    view: str


def drive_seed(seed: int, split: str, index: int) -> int:
    """Seed of drive ``index`` of ``split`` in a dataset made with ``seed``."""
    state = np.random.SeedSequence([int(seed), SPLITS.index(split), int(index)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(2))


def _plan(n_train: int, n_val: int, seed: int, sequence_length: int, frame_stride: int,
          layout: str, domain: str) -> List[_Job]:
    jobs = []
    for split, n in (('train', n_train), ('val', n_val)):
        cities = CITIES[split] if layout == 'cityscapes' else (f'{domain}{split}',)
        for index, first in enumerate(range(0, n, sequence_length)):
            count = min(sequence_length, n - first)
            jobs.append(_Job(split, cities[index % len(cities)], index // len(cities),
                             drive_seed(seed, split, index),
                             tuple(range(0, count * frame_stride, frame_stride))))
    return jobs


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f'{path}: could not write PNG')


def _render_job(job: _Job, cfg: _Config) -> np.ndarray:
    """Render and write one drive; (256,) int64 pixel counts of the written class indices."""
    table, lut = label_lut(cfg.classes)
    out = Path(cfg.out)
    drive = Drive(sample_drive(job.seed, cfg.domain, job.city))
    counts = np.zeros(256, np.int64)
    for frame in job.frames:
        rgb, label_ids = drive.render(frame, cfg.size, cfg.view)
        classes = lut[label_ids]                                   # (H, W) uint8
        counts += np.bincount(classes.ravel(), minlength=256)
        stem = f'{job.city}_{job.sequence:06d}_{frame:06d}'
        if cfg.layout == 'cityscapes':
            image_dir = out / 'leftImg8bit' / job.split / job.city
            gt_dir = out / 'gtFine' / job.split / job.city
            _write_png(image_dir / f'{stem}_leftImg8bit.png', rgb[..., ::-1])
            _write_png(gt_dir / f'{stem}_gtFine_labelIds.png', label_ids)
            _write_png(gt_dir / f'{stem}_gtFine_labelTrainIds.png', classes)
            continue
        _write_png(out / 'images' / job.split / f'{stem}.png', rgb[..., ::-1])
        mask_path = out / 'masks' / job.split / f'{stem}.png'
        if cfg.mask_format == 'index':
            _write_png(mask_path, classes)
        elif cfg.mask_format == 'rgb':
            _write_png(mask_path, table.palette()[classes][..., ::-1])   # ignore is black
        else:
            im = Image.frombytes('P', (classes.shape[1], classes.shape[0]), classes.tobytes())
            im.putpalette(table.palette().ravel().tolist())
            im.save(mask_path, format='PNG')
    return counts


def _classes_yaml(table: ClassTable, mask_format: str) -> str:
    lines = ['# Written by seg-synth: class names, colours and the mask values of each class.',
             'classes:']
    for i, (name, color) in enumerate(zip(table.names, table.colors)):
        rgb = f'[{color[0]}, {color[1]}, {color[2]}]'
        values = f'[{rgb}]' if mask_format == 'rgb' else f'[{i}]'
        lines.append(f'  - {{name: {name}, color: {rgb}, values: {values}}}')
    lines.append(f'mask_format: {mask_format}')
    lines.append('ignore_value: ' + ('[0, 0, 0]' if mask_format == 'rgb' else str(IGNORE_INDEX)))
    return '\n'.join(lines) + '\n'


def _prepare_out(out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    existing = [out / name for name in _OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f'{out}: already holds a dataset ({existing[0].name}); choose '
                              'another --out or pass --overwrite')
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _make_dirs(out: Path, layout: str, jobs: Sequence[_Job]) -> None:
    for split in SPLITS:
        if layout == 'folder':
            (out / 'images' / split).mkdir(parents=True, exist_ok=True)
            (out / 'masks' / split).mkdir(parents=True, exist_ok=True)
    for job in jobs:
        if layout == 'cityscapes':
            (out / 'leftImg8bit' / job.split / job.city).mkdir(parents=True, exist_ok=True)
            (out / 'gtFine' / job.split / job.city).mkdir(parents=True, exist_ok=True)


def _worker_init() -> None:
    cv2.setNumThreads(1)


def generate(out_dir: PathLike, layout: str = 'cityscapes', classes: Optional[str] = None,
             n_train: int = 20, n_val: int = 10, size: Tuple[int, int] = (256, 128),
             seed: int = 0, domain: Optional[str] = None, sequence_length: int = 4,
             frame_stride: int = 5, mask_format: str = 'index', view: str = 'front',
             workers: int = 1, overwrite: bool = False, progress: bool = False) -> Dict:
    """
    Write a synthetic dataset; returns a summary dict (counts, class fractions, speed).

    ``classes`` defaults to 'cityscapes' for the cityscapes layout and 'custom8' for folder;
    ``domain`` to 'source' and 'target' respectively. ``n_train``/``n_val`` frames are cut into
    drives of ``sequence_length`` frames, ``frame_stride`` x 0.1 s apart.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose one of {list(LAYOUTS)}')
    classes = classes or ('cityscapes' if layout == 'cityscapes' else 'custom8')
    if classes not in CLASS_SETS:
        raise ValueError(f'unknown class set {classes!r}; choose one of {list(CLASS_SETS)}')
    if layout == 'cityscapes' and classes != 'cityscapes':
        raise ValueError('the cityscapes layout stores Cityscapes label ids and train ids; '
                         f'use --layout folder for --classes {classes}')
    domain = domain or ('source' if layout == 'cityscapes' else 'target')
    if domain not in DOMAINS:
        raise ValueError(f'unknown domain {domain!r}; choose one of {list(DOMAINS)}')
    if mask_format not in MASK_FORMATS:
        raise ValueError(f'unknown mask format {mask_format!r}; choose one of '
                         f'{list(MASK_FORMATS)}')
    if layout == 'cityscapes' and mask_format != 'index':
        raise ValueError('--mask-format applies to the folder layout only')
    if view not in VIEWS:
        raise ValueError(f'unknown view {view!r}; choose one of {list(VIEWS)}')
    if min(size) < 32:
        raise ValueError(f'size {size[0]}x{size[1]}: width and height must be at least 32')
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ValueError(f'need a positive number of frames (train {n_train}, val {n_val})')
    if sequence_length < 1 or frame_stride < 1 or workers < 1:
        raise ValueError('sequence length, frame stride and workers must be at least 1')
    size = (int(size[0]), int(size[1]))
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    jobs = _plan(n_train, n_val, seed, sequence_length, frame_stride, layout, domain)
    _make_dirs(out, layout, jobs)
    table, _ = label_lut(classes)
    if layout == 'folder':
        (out / 'classes.yaml').write_text(_classes_yaml(table, mask_format), encoding='utf-8')
    cfg = _Config(str(out), layout, classes, domain, size, mask_format, view)
    _logger.info('seg-synth: %d train + %d val frames (%d drives), %s layout, %s classes, '
                 '%s domain, %dx%d, seed %d -> %s', n_train, n_val, len(jobs), layout, classes,
                 domain, size[0], size[1], seed, out)
    counts = np.zeros(256, np.int64)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    bar = tqdm(total=n_train + n_val, unit='frame', desc='seg-synth', disable=not progress)
    try:
        for job_counts, job in zip(_run_jobs(jobs, cfg, workers), jobs):
            counts += job_counts
            bar.update(len(job.frames))
    finally:
        bar.close()
    seconds = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    total = max(int(counts.sum()), 1)
    fractions = {name: round(float(counts[i]) / total, 5) for i, name in enumerate(table.names)}
    fractions['ignore'] = round(float(counts[IGNORE_INDEX]) / total, 5)
    record = {'layout': layout, 'classes': classes, 'domain': domain, 'view': view,
              'size': list(size), 'seed': seed, 'train': n_train, 'val': n_val,
              'sequence_length': sequence_length, 'frame_stride': frame_stride,
              'mask_format': mask_format if layout == 'folder' else None,
              'drives': len(jobs), 'class_fractions': fractions}
    (out / 'seg_synth.json').write_text(json.dumps(record, indent=2) + '\n', encoding='utf-8')
    summary = dict(record, out_dir=str(out), frames=n_train + n_val, seconds=round(seconds, 3),
                   frames_per_second=round((n_train + n_val) / max(seconds, 1e-9), 2),
                   frames_per_cpu_second=round((n_train + n_val) / max(cpu, 1e-9), 2)
                   if workers == 1 else None)
    _logger.info('seg-synth: wrote %d frames in %.1f s (%.1f frames/s)', summary['frames'],
                 seconds, summary['frames_per_second'])
    return summary


def _run_jobs(jobs: Sequence[_Job], cfg: _Config, workers: int) -> Iterator[np.ndarray]:
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield _render_job(job, cfg)
        return
    ctx = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_worker_init) as pool:
        yield from pool.map(_render_job, jobs, [cfg] * len(jobs))


def samples_sheet(path: PathLike, seeds: Sequence[int] = (3, 12),
                  size: Tuple[int, int] = (256, 128)) -> np.ndarray:
    """
    Write a contact sheet of sample frames to ``path`` (PNG); returns it as RGB.

    One row per seed: source image, its Cityscapes train ids in the Cityscapes colours, target
    image, its custom8 classes in their colours (ignore is black).
    """
    rows = []
    for seed in seeds:
        cells = []
        for domain, classes in (('source', 'cityscapes'), ('target', 'custom8')):
            rgb, label_ids = render_frame(seed, size, domain)
            table, lut = label_lut(classes)
            cells += [rgb, table.palette()[lut[label_ids]]]
        rows.append(np.concatenate(cells, 1))
    sheet = np.concatenate(rows, 0)                           # (rows x H, 4 x W, 3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f'{path}: could not write PNG')
    return sheet


def build_parser() -> argparse.ArgumentParser:
    """Build the seg-synth command line parser."""
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='seg-synth', description='Write procedural driving scenes as a Cityscapes-layout '
        'dataset or as a folder dataset with another class set and another look.')
    p.add_argument('--layout', choices=LAYOUTS, help='dataset layout (required)')
    p.add_argument('--classes', choices=CLASS_SETS,
                   help='class set of the masks (default: cityscapes for the cityscapes layout, '
                   'custom8 for folder)')
    p.add_argument('--out', help='output folder (required)')
    p.add_argument('--train', type=int, default=20, help='training frames (default 20)')
    p.add_argument('--val', type=int, default=10, help='validation frames (default 10)')
    p.add_argument('--size', default='256x128', help='image size WxH (default 256x128)')
    p.add_argument('--seed', type=int, default=0, help='seed of the drives (same seed, same data)')
    p.add_argument('--domain', choices=DOMAINS,
                   help='look of the world (default: source for cityscapes, target for folder)')
    p.add_argument('--mask-format', choices=MASK_FORMATS, default='index',
                   help='folder layout: index, palette or rgb masks (default index)')
    p.add_argument('--sequence-length', type=int, default=4,
                   help='frames per drive (default 4)')
    p.add_argument('--frame-stride', type=int, default=5,
                   help='0.1 s steps between the frames of a drive (default 5)')
    p.add_argument('--view', choices=VIEWS, default='front', help='camera (default front)')
    p.add_argument('--workers', type=int, default=1, help='processes (default 1)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace a dataset already in --out')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    p.add_argument('--samples-sheet', metavar='PNG',
                   help='only write a contact sheet of source and target samples (image and '
                   'labels) to this file, from --seed')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``seg-synth`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.samples_sheet:
        sheet = samples_sheet(args.samples_sheet, (args.seed, args.seed + 9),
                              parse_size(args.size))
        print(f'seg-synth: wrote {args.samples_sheet} ({sheet.shape[1]}x{sheet.shape[0]})')
        return 0
    if not args.layout or not args.out:
        parser.error('--layout and --out are required')
    try:
        size = parse_size(args.size)
        summary = generate(args.out, args.layout, args.classes, args.train, args.val, size,
                           args.seed, args.domain, args.sequence_length, args.frame_stride,
                           args.mask_format, args.view, args.workers, args.overwrite,
                           progress=not args.quiet)
    except (ValueError, FileExistsError, OSError) as e:
        print(f'seg-synth: error: {e}', file=sys.stderr)
        return 2
    fractions = ', '.join(f'{k} {v:.3f}' for k, v in summary['class_fractions'].items() if v)
    print(f'seg-synth: {summary["frames"]} frames ({summary["train"]} train, {summary["val"]} '
          f'val) in {summary["out_dir"]}, {summary["frames_per_second"]:.1f} frames/s; '
          f'class fractions: {fractions}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
