"""
Image + mask transforms: training augmentation (albumentations) and validation.

Both pipelines take an RGB (H, W, 3) uint8 image and an (H, W) uint8 mask (255 = ignore) and
return ``(image float32 (3, h, w) normalised, mask int64 (h, w))`` at the network size (w, h).
Geometric steps move image and mask together; the mask is always resampled with nearest
neighbour and padded with the ignore label, so no invented class appears at a border.

Training: random scale relative to the network size (one resize from the original), pad with
ignore where the scaled image is smaller, random crop, horizontal flip, small rotation, blur and
colour jitter. Validation: the model's own network-input step (seg_training.nets.preprocess, the
one the node runs) and a nearest-neighbour mask.

Randomness comes from the albumentations ``Compose`` generator only; :meth:`SegTransform.set_seed`
makes it reproducible (the trainer reseeds it every epoch and in every DataLoader worker).
"""

from dataclasses import dataclass
import logging
from typing import Any, Dict, Sequence, Tuple

import albumentations as A
from albumentations.core.transforms_interface import BaseTransformInitSchema
import cv2
import numpy as np
import torch

from seg_training.base.classes import IGNORE_INDEX
from seg_training.nets.preprocess import DEFAULT_RESIZE, Preprocessing, preprocessing, Resize

_logger = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    """Training augmentation, applied to image and mask together (see transforms.py)."""

    hflip_p: float = 0.5
    scale_min: float = 0.75      # random scale relative to the network input size
    scale_max: float = 1.5
    rotate_deg: float = 5.0      # rotation limit in degrees, either way
    rotate_p: float = 0.3
    blur_p: float = 0.2
    color_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03


class ScaleToSize(A.DualTransform):
    """
    Resize to ``scale * (width, height)`` with ``scale`` uniform in ``scale_range``.

    The scale is relative to the network input size, not to the original image, so a 2048x1024
    Cityscapes frame and a 640x480 frame both end up around the training size after one resize.
    Images use area interpolation when shrinking (linear otherwise); masks use nearest.
    """

    class InitSchema(BaseTransformInitSchema):
        width: int
        height: int
        scale_range: Tuple[float, float]

    def __init__(self, width: int, height: int, scale_range: Tuple[float, float] = (0.5, 2.0),
                 p: float = 1.0) -> None:
        super().__init__(p=p)
        self.width = width
        self.height = height
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def get_params(self) -> Dict[str, float]:
        return {'scale': self.py_random.uniform(*self.scale_range)}

    def _size(self, scale: float) -> Tuple[int, int]:
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))

    def apply(self, img: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        w, h = self._size(scale)
        shrink = w * h < img.shape[0] * img.shape[1]
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink
                          else cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return cv2.resize(mask, self._size(scale), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('width', 'height', 'scale_range')


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'expected an RGB (H, W, 3) uint8 image, got {image.shape} '
                         f'{image.dtype}')
    if mask.shape != image.shape[:2]:
        raise ValueError(f'mask shape {mask.shape} != image shape {image.shape[:2]}')


class SegTransform:
    """An albumentations pipeline plus normalisation and conversion to tensors."""

    def __init__(self, compose: A.Compose, mean: Sequence[float], std: Sequence[float]) -> None:
        self.compose = compose
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)

    def set_seed(self, seed: int) -> None:
        """Restart the augmentation random stream from ``seed``."""
        self.compose.set_random_seed(int(seed))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, mask)
        out = self.compose(image=image, mask=mask)
        img = (out['image'].astype(np.float32) / 255.0 - self.mean) / self.std  # (h, w, 3)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, h, w)
        y = torch.from_numpy(out['mask'].astype(np.int64))  # (h, w)
        return x, y


def train_transform(size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                    aug: AugmentConfig = AugmentConfig(), seed: int = 0) -> SegTransform:
    """Training augmentation to network size ``size`` (W, H), then normalisation."""
    w, h = size
    steps = [
        ScaleToSize(w, h, (aug.scale_min, aug.scale_max)),
        A.PadIfNeeded(min_height=h, min_width=w, position='random',
                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(height=h, width=w),
        A.HorizontalFlip(p=aug.hflip_p),
    ]
    if aug.rotate_deg > 0 and aug.rotate_p > 0:
        steps.append(A.Rotate(limit=(-aug.rotate_deg, aug.rotate_deg),
                              interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                              border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX,
                              p=aug.rotate_p))
    if aug.blur_p > 0:
        steps.append(A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5), p=aug.blur_p))
    if aug.color_p > 0:
        steps.append(A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast,
                                   saturation=aug.saturation, hue=aug.hue, p=aug.color_p))
    return SegTransform(A.Compose(steps, seed=seed), mean, std)


class ValTransform:
    """
    The model's own network-input step (seg_training.nets.preprocess) and a nearest-neighbour mask.

    The image goes through exactly what the node runs; the mask is resized to the network size
    with nearest neighbour (``label_size=False``) or kept at its own size (``label_size=True``).
    """

    def __init__(self, prep: Preprocessing, label_size: bool = False) -> None:
        self.prep = prep
        self.label_size = label_size

    def set_seed(self, seed: int) -> None:
        """Do nothing: validation has no randomness."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, mask)
        x = self.prep.image(image)  # (3, h, w) normalised
        w, h = self.prep.size
        if not self.label_size and mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)  # (h, w)
        return x, torch.from_numpy(mask.astype(np.int64))


def val_transform(size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                  resize: Resize = DEFAULT_RESIZE, label_size: bool = False) -> ValTransform:
    """Resize to network size ``size`` (W, H) with ``resize`` and normalise; see ValTransform."""
    return ValTransform(preprocessing(size, mean, std, resize), label_size)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a normalised (3, H, W) tensor (for sample plots)."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * s + m).clamp(0, 1) * 255.0 + 0.5  # (3, H, W)
    return rgb.to(torch.uint8).permute(1, 2, 0).numpy()
