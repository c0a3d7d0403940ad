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
read by seg_training/datasets/formats.py. Frames without labels (``images``: every image under a
folder) train by distillation alone (:class:`ImageFolderDataset`).
"""


from concurrent.futures import ThreadPoolExecutor
import ctypes
import functools
import logging
import os
from pathlib import Path
import signal
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
import torch
from torch.utils.data import Dataset

from seg_training.base.classes import (ClassTable, cityscapes_label_to_train_id, cityscapes_table,
                                       IGNORE_INDEX)
from seg_training.base.dataset_kinds import DATASETS
from seg_training.datasets.formats import FORMATS
from seg_training.datasets.segmentation import (_relative_stems, _spread, DatasetError,
                                                image_file_size, IMAGE_SUFFIXES, PathLike,
                                                read_classes_yaml, read_image,
                                                read_palette_indices, read_single_channel,
                                                SegmentationDataset, Transform)

_logger = logging.getLogger(__name__)

DATASET_KINDS = DATASETS  # this module's two layouts, then formats.py's
_logger = logging.getLogger(__name__)


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
    frames and only a teacher's soft targets teach (seg_training.training.distill). The folder
    has no class table of its own; ``classes`` is the student's.
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
