"""Transforms: image and mask stay aligned, borders are ignore, seeds reproduce augmentations."""

import cv2
import numpy as np
import pytest
import torch

from seg_training.datasets.transforms import AugmentConfig
from seg_training.datasets.transforms import denormalize, train_transform, val_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# Colours far apart, so a class can be read back from a pixel's colour.
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                   [255, 0, 255]], np.uint8)


def _pattern(h: int, w: int, seed: int = 0, block: int = 8):
    """Blocky random class map and the image that paints each class in its colour."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(COLORS), (h // block, w // block)).astype(np.uint8)
    mask = np.kron(blocks, np.ones((block, block), np.uint8))  # (h, w)
    return COLORS[mask], mask


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one label (away from edges of classes and padding)."""
    lo = cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    hi = cv2.dilate(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return (lo == hi) & (mask != 255)


def _class_of_pixels(x: torch.Tensor) -> np.ndarray:
    """Nearest palette colour of each pixel of a normalised (3, H, W) tensor."""
    rgb = denormalize(x, MEAN, STD).astype(np.int32)  # (H, W, 3)
    d = ((rgb[:, :, None, :] - COLORS[None, None].astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1)


def test_flip_moves_image_and_mask_together():
    image, mask = _pattern(32, 64)
    aug = AugmentConfig(hflip_p=1.0, scale_min=1.0, scale_max=1.0, rotate_p=0.0, blur_p=0.0,
                        color_p=0.0)
    x, y = train_transform((64, 32), MEAN, STD, aug)(image, mask)
    assert x.shape == (3, 32, 64) and x.dtype == torch.float32
    assert y.shape == (32, 64) and y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), mask[:, ::-1])
    np.testing.assert_array_equal(denormalize(x, MEAN, STD), image[:, ::-1])


@pytest.mark.parametrize('seed', range(6))
def test_scale_crop_rotate_keep_alignment(seed):
    image, mask = _pattern(64, 128, seed, block=16)
    aug = AugmentConfig(hflip_p=0.5, scale_min=0.5, scale_max=2.0, rotate_deg=10.0,
                        rotate_p=1.0, blur_p=0.0, color_p=0.0)
    x, y = train_transform((64, 32), MEAN, STD, aug, seed=seed)(image, mask)
    y = y.numpy().astype(np.uint8)
    inside = _interior(y)
    assert inside.sum() > 150
    agree = (_class_of_pixels(x)[inside] == y[inside]).mean()
    assert agree > 0.99, f'image and mask disagree on {1 - agree:.1%} of the pixels'


def test_zoom_out_pads_mask_with_ignore_and_image_with_black():
    image, mask = _pattern(32, 64)
    aug = AugmentConfig(hflip_p=0.0, scale_min=0.5, scale_max=0.5, rotate_p=0.0, blur_p=0.0,
                        color_p=0.0)
    x, y = train_transform((64, 32), MEAN, STD, aug)(image, mask)
    pad = y.numpy() == 255
    assert pad.sum() == 64 * 32 - 32 * 16  # the half-size image covers a quarter
    assert (denormalize(x, MEAN, STD)[pad] == 0).all()


def test_photometric_steps_leave_the_mask_alone():
    image, mask = _pattern(32, 64)
    aug = AugmentConfig(hflip_p=0.0, scale_min=1.0, scale_max=1.0, rotate_p=0.0, blur_p=1.0,
                        color_p=1.0)
    x, y = train_transform((64, 32), MEAN, STD, aug, seed=3)(image, mask)
    np.testing.assert_array_equal(y.numpy(), mask)
    assert not np.array_equal(denormalize(x, MEAN, STD), image)


def test_seed_reproduces_and_varies_augmentation():
    image, mask = _pattern(64, 128)
    t = train_transform((64, 32), MEAN, STD)
    t.set_seed(7)
    a = [t(image, mask) for _ in range(3)]
    t.set_seed(7)
    b = [t(image, mask) for _ in range(3)]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], a[1][0])


def test_val_transform_resizes_with_nearest_labels():
    image, mask = _pattern(96, 160)
    mask[0, 0] = 255
    x, y = val_transform((64, 32), MEAN, STD)(image, mask)
    assert x.shape == (3, 32, 64) and y.shape == (32, 64)
    assert set(np.unique(y.numpy()).tolist()) <= set(np.unique(mask).tolist())
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(x * s + m, torch.from_numpy(denormalize(x, MEAN, STD)).permute(
        2, 0, 1).float() / 255, atol=1 / 255)


def test_bad_input_is_refused():
    image, mask = _pattern(32, 64)
    t = val_transform((64, 32), MEAN, STD)
    with pytest.raises(ValueError, match='mask shape'):
        t(image, mask[:16])
    with pytest.raises(ValueError, match='RGB'):
        t(image[:, :, 0], mask)
