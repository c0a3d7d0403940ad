"""
Segmentation datasets' common ground: image and mask readers, the base class, classes.yaml.

The readers of image and mask files, :class:`SegmentationDataset` (the base of every layout)
and the folder layout's ``classes.yaml`` (:class:`MaskSpec`).

Every bad file is an error (:class:`DatasetError`) that names its path; an image's size is read
from its header first (:mod:`seg_training.datasets.image_header`) so that a file declaring more
than ``MAX_IMAGE_PIXELS`` is refused before it is decoded.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import logging
import mmap
import os
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from seg_training.base.classes import ClassTable, cityscapes_table, IGNORE_INDEX
from seg_training.base.yaml_reader import ConfigError, decode_utf8, read_yaml_file
from seg_training.datasets.image_header import compressed_size, sniff_format

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


class DatasetError(ValueError):
    """A dataset folder or file that cannot be used; the message names the path."""


def image_file_size(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Tuple[int, int]:
    """
    (W, H) of an image file from its header, without decoding it; DatasetError names the file.

    PNG and JPEG headers are read as the node reads compressed frames
    (:func:`seg_training.datasets.image_header.compressed_size`), other formats by PIL; an image
    over ``max_pixels`` is refused before anything is allocated for its pixels.
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
