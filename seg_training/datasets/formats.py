"""
Datasets in the layouts other tools write, read as they are (no renaming, no glue).

``--dataset bdd100k`` (BDD100K semantic segmentation; masks hold the 19 Cityscapes train ids,
255 = ignore)::

    <root>/images/10k/<split>/<name>.jpg
    <root>/labels/sem_seg/masks/<split>/<name>.png        (2022 release)
    <root>/labels/<split>/<name>_train_id.png              (the older ``seg/`` release)

``--dataset mmseg`` (mmsegmentation's custom dataset layout; masks hold class indices, 255 =
ignore; the class list comes from ``classes.yaml`` as for the folder dataset, e.g. the one line
``preset: cityscapes19``)::

    <root>/img_dir/<split>/<name>.jpg|.png
    <root>/ann_dir/<split>/<name>.png
    <root>/classes.yaml

``--dataset camvid`` (CamVid with its 11 classes as SegNet's tutorial and most papers use it;
value 11 = void is ignored)::

    <root>/<split>/<name>.png
    <root>/<split>annot/<name>.png

``--dataset cvat`` (CVAT's "Segmentation mask 1.1" export with images; RGB masks whose colours
``labelmap.txt`` names; the ``background`` label is not a class: its pixels are ignored)::

    <root>/labelmap.txt                       # label:color_rgb:parts:actions
    <root>/ImageSets/Segmentation/<split>.txt  # one image name per line
    <root>/JPEGImages/<name>.jpg|.png
    <root>/SegmentationClass/<name>.png
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from seg_training.base.classes import CAMVID, ClassTable, cityscapes_table, IGNORE_INDEX
from seg_training.datasets.segmentation import (_relative_stems, DatasetError, IMAGE_SUFFIXES,
                                                MaskSpec, PathLike, read_classes_yaml, read_image,
                                                read_single_channel, read_text_file,
                                                SegmentationDataset, Transform)

CVAT_BACKGROUND = 'background'


def _pairs(images: Dict[str, Path], masks: Dict[str, Path], mask_dir: Path,
           mask_key=lambda key: key) -> List[Tuple[Path, Path]]:
    """(image, mask) pairs by name; the first image without a mask is an error naming both."""
    samples = []
    for key, img in images.items():
        mk = mask_key(key)
        if mk not in masks:
            raise DatasetError(f'{mask_dir / mk}.png: mask of {img} not found')
        samples.append((img, masks[mk]))
    return samples


def _index_masks(path: Path) -> np.ndarray:
    """(H, W) uint8 values of an 8-bit index mask."""
    arr = read_single_channel(path)
    if arr.dtype != np.uint8:
        raise DatasetError(f'{path}: expected an 8-bit index mask, got {arr.dtype}')
    return arr


class BDD100KDataset(SegmentationDataset):
    """BDD100K semantic segmentation (10k images): Cityscapes' 19 classes as train ids."""

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        layouts = [  # (image folder, mask folder, mask name suffix)
            (root / 'images' / '10k' / split, root / 'labels' / 'sem_seg' / 'masks' / split, ''),
            (root / 'images' / split, root / 'labels' / split, '_train_id'),
        ]
        for image_dir, mask_dir, suffix in layouts:
            if image_dir.is_dir():
                break
        else:
            raise DatasetError(f'{root}: no BDD100K images for split {split!r} (expected '
                               f'images/10k/{split}/*.jpg or images/{split}/*.jpg)')
        images = _relative_stems(image_dir, 'image')
        if not images:
            raise DatasetError(f'{image_dir}: no {"/".join(IMAGE_SUFFIXES)} images')
        samples = _pairs(images, _relative_stems(mask_dir, 'mask'), mask_dir,
                         lambda key: key + suffix)
        super().__init__(root, split, cityscapes_table(), samples, transform, max_samples)

    def read_mask(self, path: Path) -> np.ndarray:
        return _index_masks(path)


class MMSegDataset(SegmentationDataset):
    """mmsegmentation's ``img_dir``/``ann_dir`` layout with a ``classes.yaml`` class list."""

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        self.spec = read_classes_yaml(root / 'classes.yaml')
        if self.spec.mask_format != 'index':
            raise DatasetError(f'{root / "classes.yaml"}: mmseg annotations are index masks; '
                               f'mask_format {self.spec.mask_format!r} does not apply')
        image_dir, mask_dir = root / 'img_dir' / split, root / 'ann_dir' / split
        images = _relative_stems(image_dir, 'image')
        if not images:
            raise DatasetError(f'{image_dir}: no {"/".join(IMAGE_SUFFIXES)} images')
        samples = _pairs(images, _relative_stems(mask_dir, 'annotation'), mask_dir)
        super().__init__(root, split, self.spec.classes, samples, transform, max_samples)

    def read_mask(self, path: Path) -> np.ndarray:
        return self.spec.decode(read_single_channel(path))


class CamVidDataset(SegmentationDataset):
    """CamVid, 11 classes (``<split>/`` images, ``<split>annot/`` masks; 11 = void)."""

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        image_dir, mask_dir = root / split, root / f'{split}annot'
        images = _relative_stems(image_dir, 'image')
        if not images:
            raise DatasetError(f'{image_dir}: no {"/".join(IMAGE_SUFFIXES)} images')
        samples = _pairs(images, _relative_stems(mask_dir, 'annotation'), mask_dir)
        self._lut = np.full(256, IGNORE_INDEX, np.uint8)
        self._lut[:CAMVID.num_classes] = np.arange(CAMVID.num_classes)
        super().__init__(root, split, CAMVID, samples, transform, max_samples)

    def read_mask(self, path: Path) -> np.ndarray:
        return self._lut[_index_masks(path)]  # void (11) -> ignore


def read_cvat_labelmap(path: Path) -> MaskSpec:
    """Classes and colours of a CVAT ``labelmap.txt`` (``label:r,g,b:parts:actions`` lines)."""
    if not path.is_file():
        raise DatasetError(f'{path}: labelmap.txt not found (export the task as '
                           '"Segmentation mask 1.1" with images)')
    names: List[str] = []
    colors: List[Tuple[int, int, int]] = []
    for n, line in enumerate(read_text_file(path, 'label map').splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.split(':')
        try:
            rgb = tuple(int(v) for v in fields[1].split(','))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (IndexError, ValueError):
            raise DatasetError(f'{path}:{n}: expected "label:r,g,b:parts:actions", '
                               f'got {line[:80]!r}') from None
        if fields[0] == CVAT_BACKGROUND:
            continue
        names.append(fields[0])
        colors.append(rgb)
    if not names:
        raise DatasetError(f'{path}: no labels besides {CVAT_BACKGROUND!r}')
    try:
        classes = ClassTable(tuple(names), tuple(colors))
    except ValueError as e:
        raise DatasetError(f'{path}: {e}') from None
    codes = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], np.int64)
    if len(set(codes.tolist())) != len(codes):
        raise DatasetError(f'{path}: two labels share a colour')
    order = np.argsort(codes)
    return MaskSpec(classes, 'rgb', rgb_codes=codes[order],
                    rgb_ids=order.astype(np.uint8))


class CVATDataset(SegmentationDataset):
    """CVAT "Segmentation mask 1.1": labelmap.txt, ImageSets, JPEGImages, SegmentationClass."""

    def __init__(self, root: PathLike, split: str, transform: Optional[Transform] = None,
                 max_samples: Optional[int] = None) -> None:
        root = Path(root)
        self.spec = read_cvat_labelmap(root / 'labelmap.txt')
        subsets = root / 'ImageSets' / 'Segmentation'
        listing = subsets / f'{split}.txt'
        if not listing.is_file():
            have = sorted(p.stem for p in subsets.glob('*.txt'))
            raise DatasetError(f'{listing}: subset {split!r} not in the export (subsets: '
                               f'{", ".join(have) or "none"}); name CVAT subsets train and val')
        images = _relative_stems(root / 'JPEGImages', 'image (export with images)')
        mask_dir = root / 'SegmentationClass'
        masks = _relative_stems(mask_dir, 'mask')
        names = [n.strip() for n in read_text_file(listing, 'image list').splitlines()
                 if n.strip()]
        missing = [n for n in names if n not in images]
        if missing:
            raise DatasetError(f'{root / "JPEGImages" / missing[0]}: image listed in {listing} '
                               f'not found ({len(missing)} missing)')
        samples = _pairs({n: images[n] for n in names}, masks, mask_dir)
        if not samples:
            raise DatasetError(f'{listing}: no images listed')
        super().__init__(root, split, self.spec.classes, samples, transform, max_samples)

    def read_mask(self, path: Path) -> np.ndarray:
        return self.spec.decode(read_image(path))  # colours not in labelmap -> ignore


FORMATS = {'bdd100k': BDD100KDataset, 'mmseg': MMSegDataset, 'camvid': CamVidDataset,
           'cvat': CVATDataset}
