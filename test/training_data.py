"""
Tiny procedural datasets for the training tests, in the Cityscapes and the folder layouts.

Each scene: sky over building and vegetation, a road with a sidewalk, a pole, a car and a person,
in fixed colours plus noise, so a few epochs at 64x32 learn something.
"""

from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
from PIL import Image
import yaml

from seg_training.base.classes import CUSTOM8

# Scene classes, in CUSTOM8 order (custom8 calls the car 'vehicle').
SCENE = ('road', 'sidewalk', 'building', 'pole', 'vegetation', 'sky', 'person', 'car')
CITYSCAPES_LABEL_IDS = {'road': 7, 'sidewalk': 8, 'building': 11, 'pole': 17, 'vegetation': 21,
                        'sky': 23, 'person': 24, 'car': 26}
LOOK = {'road': (90, 90, 95), 'sidewalk': (170, 160, 150), 'building': (120, 80, 60),
        'pole': (200, 200, 40), 'vegetation': (40, 140, 40), 'sky': (120, 170, 240),
        'person': (230, 40, 40), 'car': (20, 30, 160)}


def scene(rng: np.random.Generator, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8 image and (H, W) uint8 mask of SCENE indices."""
    w, h = width, height
    mask = np.zeros((h, w), np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.55))
    mask[:horizon] = SCENE.index('sky')
    split = int(w * rng.uniform(0.3, 0.7))
    top = int(horizon * rng.uniform(0.1, 0.5))
    mask[top:horizon, :split] = SCENE.index('building')
    mask[top:horizon, split:] = SCENE.index('vegetation')
    mask[horizon:] = SCENE.index('road')
    walk = int(h * rng.uniform(0.05, 0.15))
    mask[horizon:horizon + walk] = SCENE.index('sidewalk')
    px = int(rng.integers(0, w - 3))
    mask[top:horizon + walk, px:px + 2] = SCENE.index('pole')
    cw, ch = int(w * rng.uniform(0.2, 0.35)), int(h * rng.uniform(0.15, 0.25))
    cx, cy = int(rng.integers(0, w - cw)), int(rng.integers(horizon, h - ch + 1))
    mask[cy:cy + ch, cx:cx + cw] = SCENE.index('car')
    qx, qy = int(rng.integers(0, w - 3)), int(rng.integers(horizon - 4, h - 8))
    mask[qy:qy + 8, qx:qx + 3] = SCENE.index('person')
    lut = np.array([LOOK[n] for n in SCENE], np.float32)  # (8, 3)
    img = lut[mask] * rng.uniform(0.8, 1.2) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_gray(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def write_cityscapes(root: Path, n_train: int = 8, n_val: int = 4, size=(64, 32), seed: int = 0,
                     train_ids: bool = False) -> Path:
    """Cityscapes layout with labelIds (and labelTrainIds PNGs if ``train_ids``)."""
    from seg_training.base.classes import cityscapes_label_to_train_id

    rng = np.random.default_rng(seed)
    to_label = np.array([CITYSCAPES_LABEL_IDS[n] for n in SCENE], np.uint8)
    lut = cityscapes_label_to_train_id()
    for split, n, city in (('train', n_train, 'alpha'), ('val', n_val, 'beta')):
        for i in range(n):
            img, mask = scene(rng, *size)
            label_ids = to_label[mask]
            label_ids[0, 0] = 0  # an 'unlabeled' pixel: ignored after mapping
            stem = f'{city}_{0:06d}_{i:06d}'
            _write_rgb(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png', img)
            gt = root / 'gtFine' / split / city
            _write_gray(gt / f'{stem}_gtFine_labelIds.png', label_ids)
            if train_ids:
                _write_gray(gt / f'{stem}_gtFine_labelTrainIds.png', lut[label_ids])
    return root


def write_folder(root: Path, n_train: int = 8, n_val: int = 4, size=(64, 32), seed: int = 0,
                 mask_format: str = 'index', image_ext: str = '.png') -> Path:
    """Folder layout with the custom8 classes and masks in ``mask_format``."""
    rng = np.random.default_rng(seed)
    colors = [list(c) for c in CUSTOM8.colors]
    entries = []
    for i, name in enumerate(CUSTOM8.names):
        values = [colors[i]] if mask_format == 'rgb' else [i]
        entries.append({'name': name, 'color': colors[i], 'values': values})
    root.mkdir(parents=True, exist_ok=True)
    with open(root / 'classes.yaml', 'w') as f:
        yaml.safe_dump({'classes': entries, 'mask_format': mask_format, 'ignore_value': 255}, f)
    palette = np.zeros((256, 3), np.uint8)
    palette[:8] = np.array(CUSTOM8.colors, np.uint8)
    for split, n in (('train', n_train), ('val', n_val)):
        for i in range(n):
            img, mask = scene(rng, *size)  # SCENE order == CUSTOM8 order
            mask[0, 0] = 255
            _write_rgb(root / 'images' / split / f'frame_{i:04d}{image_ext}', img)
            path = root / 'masks' / split / f'frame_{i:04d}.png'
            if mask_format == 'index':
                _write_gray(path, mask)
            elif mask_format == 'palette':
                im = Image.fromarray(mask, mode='P')
                im.putpalette(palette.ravel().tolist())
                path.parent.mkdir(parents=True, exist_ok=True)
                im.save(path)
            else:
                _write_rgb(path, palette[mask])
    return root
