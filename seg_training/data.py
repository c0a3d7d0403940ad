"""
Segmentation datasets: Cityscapes in its own layout and a team's own folder of images and masks.

Both datasets yield ``(image, mask)``: RGB ``(H, W, 3)`` uint8 and ``(H, W)`` uint8 class indices
with 255 = ignore, or whatever the ``transform(image, mask)`` given to them returns (see
transforms.py). Both expose ``classes`` (a :class:`ClassTable`) and ``label_histogram()`` (pixel
counts per class over the split, read from the masks alone, for class weights).

Cityscapes::

    <root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png   (used when present)
    <root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png        (mapped with cityscapesscripts)

Folder dataset::

    <root>/classes.yaml
    <root>/images/<split>/<name>.png|.jpg|.jpeg    (sub-folders allowed)
    <root>/masks/<split>/<name>.png|.jpg|.jpeg     (same relative name)

``classes.yaml`` (the schema seg-synth writes)::

    classes:
      - {name: road, color: [128, 64, 128], values: [0]}     # mask values -> this class
      - {name: vehicle, color: [0, 0, 142], values: [7, 8]}
    mask_format: index    # index: single-channel values; palette: indices of a PNG palette
                          # (PIL mode 'P'); rgb: values are [r, g, b] colours
    ignore_value: 255     # optional; any value no class claims is ignored (255) anyway

``values`` defaults to ``[i]`` (index, palette) or ``[color]`` (rgb) for class ``i``. Instead of
``classes``, ``preset: cityscapes19`` takes Cityscapes' 19 classes (mask value = train id). Every
bad file is an error that names its path. BDD100K, mmsegmentation, CamVid and CVAT layouts are
read by seg_training/formats.py. Frames without labels (``images``: every image under a folder)
train by distillation alone (:class:`ImageFolderDataset`).
"""

from concurrent.futures import ThreadPoolExecutor
import ctypes
from dataclasses import dataclass
import functools
import logging
import mmap
import os
from pathlib import Path
import signal
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image
import torch
from torch.utils.data import Dataset

from seg_perception.image_codec import compressed_size, sniff_format
from seg_training.classes import (ClassTable, cityscapes_label_to_train_id, cityscapes_table,
                                  IGNORE_INDEX)
from seg_training.config import ConfigError, DATASETS, decode_utf8, read_yaml_file

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Transform = Callable[[np.ndarray, np.ndarray], Any]
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
# Largest image or mask a dataset may hold (width x height), read from the file's header before
# decoding: four times a 4096x4096 frame. A PNG of one megabyte can declare 400 megapixels.
MAX_IMAGE_PIXELS = 8192 * 8192
MASK_FORMATS = ('index', 'palette', 'rgb')
# ``preset: NAME`` in classes.yaml instead of a class list (cityscapes19: the 19 Cityscapes
# classes, mask value i = train id i, 255 = ignore; palette and rgb masks use Cityscapes' colours).
CLASS_PRESETS = {'cityscapes19': cityscapes_table}
DATASET_KINDS = DATASETS  # this module's two layouts, then formats.py's


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used; the message names the path."""


def image_file_size(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Tuple[int, int]:
    """
    (W, H) of an image file from its header, without decoding it; DatasetError names the file.

    PNG and JPEG headers are read as the node reads compressed frames
    (:func:`seg_perception.image_codec.compressed_size`), other formats by PIL; an image over
    ``max_pixels`` is refused before anything is allocated for its pixels.
    """
    path = Path(path)
    try:
        with open(path, 'rb') as f:
            codec = sniff_format(f.read(16))
            if codec in ('png', 'jpeg'):
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    w, h = compressed_size(codec, data)
            else:
                with Image.open(f) as im:
                    w, h = im.size
    except FileNotFoundError:
        raise DatasetError(f'{path}: file not found') from None
    except Exception as e:  # ImageFormatError; PIL raises several types (a bomb error too)
        raise DatasetError(f'{path}: cannot be read as an image: {e}') from None
    if w * h > max_pixels:
        raise DatasetError(f'{path}: {w}x{h} = {w * h} pixels, more than the {max_pixels} a '
                           'dataset image may have; not decoded (shrink or tile it)')
    return w, h


def read_image(path: PathLike) -> np.ndarray:
    """RGB (H, W, 3) uint8 image; DatasetError naming ``path`` if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'{path}: image file not found')
    image_file_size(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f'{path}: cannot be read as an image (corrupt or unknown format)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3)


def read_text_file(path: PathLike, what: str) -> str:
    """UTF-8 text of a dataset's list file (labels, image names); DatasetError names it."""
    path = Path(path)
    try:
        return decode_utf8(path.read_bytes(), path, what)
    except ConfigError as e:
        raise DatasetError(str(e)) from None
    except OSError as e:
        raise DatasetError(f'{path}: cannot read the {what}: {e.strerror}') from None


def read_single_channel(path: PathLike) -> np.ndarray:
    """(H, W) uint8/uint16 array of a single-channel mask file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'{path}: mask file not found')
    image_file_size(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetError(f'{path}: cannot be read as a mask image (corrupt or unknown format)')
    if arr.ndim != 2:
        raise DatasetError(f'{path}: expected a single-channel mask, got shape {arr.shape} '
                           '(for colour masks set mask_format: rgb or palette in classes.yaml)')
    if arr.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f'{path}: mask dtype {arr.dtype} is neither uint8 nor uint16')
    return arr


def read_palette_indices(path: PathLike) -> np.ndarray:
    """(H, W) uint8 palette indices of a PIL mode 'P' PNG."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'{path}: mask file not found')
    image_file_size(path)
    try:
        with Image.open(path) as im:
            if im.mode != 'P':
                raise DatasetError(f'{path}: expected a palette image (PIL mode P) as '
                                   f'classes.yaml says mask_format: palette, got mode {im.mode}')
            return np.array(im, dtype=np.uint8)  # (H, W) indices, not colours
    except DatasetError:
        raise
    except Exception as e:  # PIL raises several types for broken files
        raise DatasetError(f'{path}: cannot be read as a palette mask: {e}') from e


def _relative_stems(folder: Path, what: str) -> dict:
    """{relative path without suffix: file} for the image files under ``folder``."""
    if not folder.is_dir():
        raise DatasetError(f'{folder}: {what} folder not found')
    found: dict = {}
    for p in sorted(folder.rglob('*')):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        key = p.relative_to(folder).with_suffix('').as_posix()
        if key in found:
            raise DatasetError(f'{p}: same name as {found[key]} with another suffix; '
                               'keep one file per name')
        found[key] = p
    return found


def _log_links_out_of_root(root: Path, split: str,
                           samples: Sequence[Tuple[Path, Path]]) -> None:
    """
    Log once how many image and mask files are symbolic links to files outside ``root``.

    They are read like any other: datasets are often assembled from links into shared storage.
    """
    base = root.resolve()
    outside = [p for pair in samples for p in pair
               if p is not None and not p.resolve().is_relative_to(base)]
    if outside:
        _logger.info('%s split %s: %d of %d image and mask files are links to outside the '
                     'dataset root (e.g. %s -> %s); they are read as they are', root, split,
                     len(outside), 2 * len(samples), outside[0], outside[0].resolve())


def _spread(n_total: int, n: Optional[int]) -> List[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them if n is None or larger)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return [i * n_total // n for i in range(n)]


class SegmentationDataset(Dataset):
    """Base: a list of (image, mask) files, a class table, and the mask decoding of subclasses."""

    def __init__(self, root: PathLike, split: str, classes: ClassTable,
                 samples: Sequence[Tuple[Path, Optional[Path]]],
                 transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.transform = transform
        self.samples: List[Tuple[Path, Optional[Path]]] = [
            samples[i] for i in _spread(len(samples), max_samples)]
        _logger.info('%s %s split %s: %d samples, %d classes', type(self).__name__, self.root,
                     split, len(self.samples), classes.num_classes)
        _log_links_out_of_root(self.root, split, self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def read_mask(self, path: Path) -> np.ndarray:
        """(H, W) uint8 class indices (255 = ignore) of the mask file at ``path``."""
        raise NotImplementedError

    def _checked_mask(self, path: Path) -> np.ndarray:
        mask = self.read_mask(path)
        k = self.classes.num_classes
        bad = (mask >= k) & (mask != IGNORE_INDEX)
        if bad.any():
            values = np.unique(mask[bad])[:10].tolist()
            raise DatasetError(f'{path}: class indices {values} outside 0..{k - 1} and '
                               f'{IGNORE_INDEX} (ignore)')
        return mask

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Raw ``(image (H, W, 3) uint8 RGB, mask (H, W) uint8)`` of sample ``index``."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self._checked_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(f'{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs '
                               f'from image {image_path} size {image.shape[1]}x{image.shape[0]}')
        return image, mask

    def __getitem__(self, index: int) -> Any:
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def _mask_counts(self, path: Path) -> np.ndarray:
        mask = self._checked_mask(path)
        return np.bincount(mask.ravel(), minlength=256)[:self.classes.num_classes]

    def label_histogram(self, workers: int = 2,
                        indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """
        (K,) int64 pixel count per class over the masks of the split (ignore not counted).

        Reads only the masks (of ``indices`` if given), in ``workers`` threads (decoding
        releases the GIL).
        """
        chosen = range(len(self.samples)) if indices is None else indices
        paths = [self.samples[i][1] for i in chosen]
        hist = np.zeros(self.classes.num_classes, dtype=np.int64)
        if workers > 1 and len(paths) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for counts in pool.map(self._mask_counts, paths):
                    hist += counts
        else:
            for p in paths:
                hist += self._mask_counts(p)
        return hist


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations: 19 train ids from ``cityscapesscripts``, 255 = ignore."""

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        image_dir = root / 'leftImg8bit' / split
        if not image_dir.is_dir():
            raise DatasetError(f'{image_dir}: Cityscapes image folder not found '
                               '(expected leftImg8bit/<split>/<city>/*_leftImg8bit.png)')
        samples = []
        for img in sorted(image_dir.glob('*/*_leftImg8bit.png')):
            stem = img.name[:-len('_leftImg8bit.png')]
            gt_dir = root / 'gtFine' / split / img.parent.name
            train_ids = gt_dir / f'{stem}_gtFine_labelTrainIds.png'
            label_ids = gt_dir / f'{stem}_gtFine_labelIds.png'
            if train_ids.is_file():
                samples.append((img, train_ids))
            elif label_ids.is_file():
                samples.append((img, label_ids))
            else:
                raise DatasetError(f'{label_ids}: ground truth of {img} not found '
                                   '(neither _gtFine_labelTrainIds.png nor _gtFine_labelIds.png)')
        if not samples:
            raise DatasetError(f'{image_dir}: no */*_leftImg8bit.png images')
        self._label_to_train = cityscapes_label_to_train_id()  # (256,) uint8
        super().__init__(root, split, cityscapes_table(), samples, transform, max_samples)

    def read_mask(self, path: Path) -> np.ndarray:
        arr = read_single_channel(path)
        if arr.dtype != np.uint8:
            raise DatasetError(f'{path}: Cityscapes masks are 8-bit, got {arr.dtype}')
        if path.name.endswith('_labelTrainIds.png'):
            return arr
        return self._label_to_train[arr]  # (H, W) labelIds -> trainIds


@dataclass(frozen=True)
class MaskSpec:
    """How the mask files of a folder dataset encode classes (from classes.yaml)."""

    classes: ClassTable
    mask_format: str
    lut: Optional[np.ndarray] = None        # (65536,) uint8: index/palette value -> class
    rgb_codes: Optional[np.ndarray] = None  # (N,) sorted int64 codes r << 16 | g << 8 | b
    rgb_ids: Optional[np.ndarray] = None    # (N,) uint8 class of each code

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class indices from raw mask values ((H, W) or (H, W, 3) RGB)."""
        if self.mask_format == 'rgb':
            rgb = raw.astype(np.int64)
            codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W)
            pos = np.searchsorted(self.rgb_codes, codes).clip(0, len(self.rgb_codes) - 1)
            hit = self.rgb_codes[pos] == codes
            return np.where(hit, self.rgb_ids[pos], IGNORE_INDEX).astype(np.uint8)
        return self.lut[raw]


def _int_value(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
        raise DatasetError(f'{where}: mask value {v!r} must be an integer in 0..65535')
    return v


def _rgb_value(v: Any, where: str) -> Tuple[int, int, int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                       for c in v)):
        raise DatasetError(f'{where}: rgb mask value {v!r} must be [r, g, b] in 0..255')
    return int(v[0]), int(v[1]), int(v[2])


def _expand_preset(doc: dict, path: Path) -> dict:
    """``preset: NAME`` -> the preset's classes, each class ``i`` coded as its format's default."""
    name = doc['preset']
    if not isinstance(name, str):
        raise DatasetError(f'{path}: preset must be a name (one of {list(CLASS_PRESETS)}), got '
                           f'a {type(name).__name__}')
    if name not in CLASS_PRESETS:
        raise DatasetError(f'{path}: unknown preset {name[:40]!r}; choose one of '
                           f'{list(CLASS_PRESETS)}')
    if 'classes' in doc:
        raise DatasetError(f'{path}: give either "preset" or "classes", not both')
    table = CLASS_PRESETS[name]()
    classes = [{'name': n, 'color': list(c)} for n, c in zip(table.names, table.colors)]
    return dict(doc, classes=classes)


def read_classes_yaml(path: PathLike) -> MaskSpec:
    """Parse a folder dataset's ``classes.yaml``; DatasetError names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'{path}: classes.yaml not found (the folder dataset needs it)')
    try:
        doc = read_yaml_file(path, 'class list')
    except ConfigError as e:
        raise DatasetError(str(e)) from None
    if isinstance(doc, dict) and 'preset' in doc:
        doc = _expand_preset(doc, path)
    if not isinstance(doc, dict) or not isinstance(doc.get('classes'), list) \
            or not doc['classes']:
        raise DatasetError(f'{path}: expected a mapping with a non-empty list "classes" '
                           f'or a "preset" ({", ".join(CLASS_PRESETS)})')
    fmt = doc.get('mask_format', 'index')
    if fmt not in MASK_FORMATS:
        raise DatasetError(f'{path}: mask_format must be one of {list(MASK_FORMATS)}, '
                           f'got {fmt!r}')
    names, colors, values = [], [], []
    for i, entry in enumerate(doc['classes']):
        where = f'{path}: classes[{i}]'
        if not isinstance(entry, dict) or 'name' not in entry or 'color' not in entry:
            raise DatasetError(f'{where} needs "name" and "color"')
        color = _rgb_value(entry['color'], f'{where}.color')
        names.append(str(entry['name']))
        colors.append(color)
        vals = entry.get('values', [list(color)] if fmt == 'rgb' else [i])
        if not isinstance(vals, list) or not vals:
            raise DatasetError(f'{where}.values must be a non-empty list')
        if fmt == 'rgb':
            values.append([_rgb_value(v, f'{where}.values') for v in vals])
        else:
            values.append([_int_value(v, f'{where}.values') for v in vals])
    try:
        classes = ClassTable(tuple(names), tuple(colors))
    except ValueError as e:
        raise DatasetError(f'{path}: {e}') from None
    ignore = doc.get('ignore_value', IGNORE_INDEX)
    ignore = _rgb_value(ignore, f'{path}: ignore_value') if fmt == 'rgb' and \
        isinstance(ignore, list) else ignore
    owner: dict = {}
    for cls, vals in enumerate(values):
        for v in vals:
            if v in owner and owner[v] != cls:
                raise DatasetError(f'{path}: mask value {v} is claimed by classes '
                                   f'{names[owner[v]]!r} and {names[cls]!r}')
            if v == ignore:
                raise DatasetError(f'{path}: mask value {v} of class {names[cls]!r} equals '
                                   'ignore_value')
            owner[v] = cls
    if fmt == 'rgb':
        codes = {(r << 16) | (g << 8) | b: cls for (r, g, b), cls in owner.items()}
        keys = np.array(sorted(codes), dtype=np.int64)
        ids = np.array([codes[k] for k in keys], dtype=np.uint8)
        return MaskSpec(classes, fmt, rgb_codes=keys, rgb_ids=ids)
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for v, cls in owner.items():
        lut[v] = cls
    return MaskSpec(classes, fmt, lut=lut)


class FolderDataset(SegmentationDataset):
    """A team's own data: ``images/<split>``, ``masks/<split>`` and ``classes.yaml``."""

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        self.spec = read_classes_yaml(root / 'classes.yaml')
        images = _relative_stems(root / 'images' / split, 'image')
        if not images:
            raise DatasetError(f'{root / "images" / split}: no {"/".join(IMAGE_SUFFIXES)} images')
        mask_dir = root / 'masks' / split
        masks = _relative_stems(mask_dir, 'mask')
        samples = []
        for key, img in images.items():
            if key not in masks:
                raise DatasetError(f'{mask_dir / key}.png: mask of {img} not found')
            samples.append((img, masks[key]))
        extra = sorted(set(masks) - set(images))
        if extra:
            _logger.warning('%s: %d masks without an image (e.g. %s) are not used', mask_dir,
                            len(extra), extra[0])
        super().__init__(root, split, self.spec.classes, samples, transform, max_samples)

    def read_mask(self, path: Path) -> np.ndarray:
        fmt = self.spec.mask_format
        if fmt == 'palette':
            raw = read_palette_indices(path)
        elif fmt == 'rgb':
            raw = read_image(path)  # (H, W, 3) RGB colours
        else:
            raw = read_single_channel(path)
        return self.spec.decode(raw)  # (H, W) uint8


class JointDataset(Dataset):
    """
    Several datasets with the same class names, trained as one (e.g. two domains together).

    ``transform`` set on the joint dataset applies to every part; ``max_samples`` spreads over
    the concatenation.
    """

    def __init__(self, parts: Sequence[SegmentationDataset],
                 max_samples: Optional[int] = None) -> None:
        if not parts:
            raise ValueError('JointDataset needs at least one dataset')
        first = parts[0]
        for part in parts[1:]:
            if part.classes.names != first.classes.names:
                raise DatasetError(f'{part.root}: classes {list(part.classes.names)} differ from '
                                   f'{first.root}: {list(first.classes.names)}')
        self.parts = list(parts)
        self.classes = first.classes
        self.root = first.root
        self.split = first.split
        flat = [(i, j) for i, part in enumerate(self.parts) for j in range(len(part))]
        self.index: List[Tuple[int, int]] = [flat[k] for k in _spread(len(flat), max_samples)]
        self.samples = [self.parts[i].samples[j] for i, j in self.index]
        self._transform: Optional[Transform] = None

    @property
    def transform(self) -> Optional[Transform]:
        return self._transform

    @transform.setter
    def transform(self, value: Optional[Transform]) -> None:
        self._transform = value
        for part in self.parts:
            part.transform = value

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Any:
        i, j = self.index[index]
        return self.parts[i][j]

    def label_histogram(self, workers: int = 2) -> np.ndarray:
        """(K,) int64 pixel count per class over the joint samples."""
        hist = np.zeros(self.classes.num_classes, dtype=np.int64)
        for i, part in enumerate(self.parts):
            mine = [j for p, j in self.index if p == i]
            if mine:
                hist += part.label_histogram(workers, mine)
        return hist


class ImageFolderDataset(SegmentationDataset):
    """
    Frames without labels: every image under ``root``, sub-folders included (no split).

    Each sample's mask is all ignore (255): the training augmentation runs as for labelled
    frames and only a teacher's soft targets teach (seg_training.distill). The folder has no
    class table of its own; ``classes`` is the student's.
    """

    SPLIT = 'all'

    def __init__(self, root: PathLike, classes: ClassTable, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        images = _relative_stems(root, 'image')
        if not images:
            raise DatasetError(f'{root}: no {"/".join(IMAGE_SUFFIXES)} images')
        super().__init__(root, self.SPLIT, classes, [(p, None) for p in images.values()],
                         transform, max_samples)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Raw ``(image (H, W, 3) uint8 RGB, mask (H, W) uint8 all ignore)`` of ``index``."""
        image = read_image(self.samples[index][0])  # (H, W, 3)
        return image, np.full(image.shape[:2], IGNORE_INDEX, np.uint8)

    def label_histogram(self, workers: int = 2,
                        indices: Optional[Sequence[int]] = None) -> np.ndarray:
        """(K,) zeros: no pixel is labelled."""
        return np.zeros(self.classes.num_classes, dtype=np.int64)


def build_dataset(kind: str, root: PathLike, split: str, transform: Optional[Transform] = None,
                  max_samples: Optional[int] = None,
                  classes: Optional[ClassTable] = None) -> SegmentationDataset:
    """
    Open the dataset of ``kind`` (one of DATASET_KINDS, or images) at ``root``, split ``split``.

    ``classes`` is the class table of a kind without one of its own (images; split unused).
    """
    if kind == 'images':
        if classes is None:
            raise ValueError('an images dataset needs the class table of the model it trains')
        return ImageFolderDataset(root, classes, transform, max_samples)
    if kind == 'cityscapes':
        return CityscapesDataset(root, split, transform, max_samples)
    if kind == 'folder':
        return FolderDataset(root, split, transform, max_samples)
    from seg_training.formats import FORMATS  # imports this module
    if kind in FORMATS:
        return FORMATS[kind](root, split, transform, max_samples)
    raise ValueError(f'unknown dataset kind {kind!r}; choose one of {list(DATASET_KINDS)}')


def worker_seed_transform(worker_id: int) -> None:
    """
    Reseed the dataset's transform in a DataLoader worker (a ``worker_init_fn``).

    Each worker gets a distinct, reproducible augmentation stream: torch seeds every worker
    with ``base_seed + worker_id``, and the base seed comes from the loader's generator.
    """
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    while dataset is not None and not hasattr(dataset, 'transform'):
        dataset = getattr(dataset, 'dataset', None)  # through Subset wrappers
    transform = getattr(dataset, 'transform', None)
    if transform is not None and hasattr(transform, 'set_seed'):
        transform.set_seed(torch.initial_seed() % 2 ** 32)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """
    Make this process end the moment ``parent_pid`` (its parent) does, on Linux.

    A DataLoader worker whose trainer was killed (SIGKILL, the OOM killer) otherwise lives on
    until its watchdog notices, or for ever when it is blocked writing a batch into a full
    queue that a sibling worker still holds open: it keeps the trainer's stdout and stderr
    open, so whoever waits for those waits for ever.
    """
    if not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    except (OSError, AttributeError) as exc:
        _logger.debug('worker %d will not end with its parent: %s', os.getpid(), exc)
        return
    if os.getppid() != parent_pid:  # the parent ended before the signal was armed
        os._exit(1)


def worker_init(parent_pid: int, worker_id: int) -> None:
    """
    Prepare a DataLoader worker of this project (its ``worker_init_fn``).

    Bind it to the loader's process: ``functools.partial(worker_init, os.getpid())``. The
    worker ends with that process (:func:`die_with_parent`) and reseeds the dataset's
    transform (:func:`worker_seed_transform`).
    """
    die_with_parent(parent_pid)
    worker_seed_transform(worker_id)


def loader_worker_init() -> Callable[[int], None]:
    """Return a ``worker_init_fn`` for DataLoaders of this process (see :func:`worker_init`)."""
    return functools.partial(worker_init, os.getpid())


# ----------------------------------------------------------------------------- up-front check

def check_image_file(path: Path) -> Tuple[int, int]:
    """
    Decode the image at ``path`` once as training will; return its (W, H).

    DatasetError names the path. JPEGs are decoded strictly (PIL): OpenCV silently fills a
    truncated JPEG with grey, which would train on a broken picture.
    """
    if _is_jpeg_file(path):
        return check_jpeg_whole(path, 'an image')
    image = read_image(path)  # (H, W, 3)
    return image.shape[1], image.shape[0]


def _is_jpeg_file(path: Path) -> bool:
    return path.suffix.lower() in ('.jpg', '.jpeg') and path.is_file()


def check_jpeg_whole(path: Path, what: str) -> Tuple[int, int]:
    """Decode the JPEG at ``path`` strictly (PIL); return its (W, H) or raise DatasetError."""
    image_file_size(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Exception as e:  # PIL raises several types for broken files
        raise DatasetError(f'{path}: cannot be read as {what}: {e}') from e


def check_sample(ds: SegmentationDataset, index: int) -> Tuple[List[str], np.ndarray]:
    """
    Check sample ``index`` of ``ds``: image decodable, mask decodable with known labels, sizes.

    Returns (problems, each naming its path; (K,) int64 labelled pixels per class of the mask).
    """
    image_path, mask_path = ds.samples[index]
    problems: List[str] = []
    counts = np.zeros(ds.classes.num_classes, dtype=np.int64)
    size = mask = None
    try:
        size = check_image_file(image_path)
    except DatasetError as e:
        problems.append(str(e))
    if mask_path is None:  # frames without labels (ImageFolderDataset)
        return problems, counts
    try:
        if _is_jpeg_file(mask_path):  # a truncated one would decode, grey-filled, too
            check_jpeg_whole(mask_path, 'a mask image')
        mask = ds._checked_mask(mask_path)  # (H, W) uint8
        counts = np.bincount(mask.ravel(), minlength=256)[:ds.classes.num_classes]
    except DatasetError as e:
        problems.append(str(e))
    if size is not None and mask is not None and (mask.shape[1], mask.shape[0]) != size:
        problems.append(f'{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from '
                        f'image {image_path} size {size[0]}x{size[1]}')
    return problems, counts


def _parts(ds: Union[SegmentationDataset, JointDataset]
           ) -> List[Tuple[SegmentationDataset, int]]:
    """(dataset, index) of every sample of ``ds`` (through the parts of a JointDataset)."""
    if isinstance(ds, JointDataset):
        return [(ds.parts[i], j) for i, j in ds.index]
    return [(ds, i) for i in range(len(ds))]


def check_datasets(datasets: Sequence[Union[SegmentationDataset, JointDataset]],
                   workers: int = 4, progress: bool = False) -> List[np.ndarray]:
    """
    Check every sample of ``datasets`` before any training or evaluation step.

    Each image and mask is decoded once, in ``workers`` threads (decoding releases the GIL),
    with a tqdm bar if ``progress``. Raises one DatasetError listing every bad file, or naming
    a split without a single labelled pixel (nothing to learn or score); otherwise returns, per
    dataset, the (K,) int64 labelled pixels per class of its masks (what ``label_histogram``
    counts).
    """
    from tqdm import tqdm

    jobs = [(k, part, i) for k, ds in enumerate(datasets) for part, i in _parts(ds)]
    hists = [np.zeros(ds.classes.num_classes, dtype=np.int64) for ds in datasets]
    problems: List[str] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(jobs), desc='checking data', unit='sample', leave=False,
                 disable=not progress, dynamic_ncols=True) as bar:
        for (k, _, _), (found, counts) in zip(
                jobs, pool.map(lambda job: check_sample(job[1], job[2]), jobs)):
            problems.extend(found)
            hists[k] += counts
            bar.update(1)
    if problems:
        splits: dict = {}
        for ds in datasets:
            splits.setdefault(str(ds.root), []).append(ds.split)
        roots = '; '.join(f'{r} ({", ".join(s)})' for r, s in splits.items())
        raise DatasetError(f'{len(problems)} problems in {len(jobs)} samples of {roots}; fix or '
                           'remove these files:\n  ' + '\n  '.join(problems))
    for ds, hist in zip(datasets, hists):
        if isinstance(ds, ImageFolderDataset):
            continue  # frames without labels: a teacher's soft targets are all they teach
        if len(ds) and not hist.any():
            raise DatasetError(f'{ds.root}: split {ds.split!r} has no labelled pixel in its '
                               f'{len(ds)} masks: every mask value is the ignore label or '
                               'matches no class (check the masks against the class table)')
    _logger.info('checked %d samples (images and masks) in %.1f s', len(jobs),
                 time.perf_counter() - t0)
    return hists
