"""
Raw camera encodings (yuv422, yuv422_yuy2, bayer_*8) to RGB, on the model's device.

Two paths give the same picture:

- CPU: OpenCV's ``cvtColor`` (``COLOR_YUV2RGB_UYVY``/``_YUY2``, bilinear ``COLOR_Bayer*2RGB``);
- any torch device (meant for CUDA, so the raw bytes, 1-2 per pixel, are uploaded and converted
  there): BT.601 video-range YUV->RGB with OpenCV's fixed-point coefficients, and bilinear
  demosaicing as a depthwise ``conv2d`` (each missing sample is the mean of its 2 or 4 nearest
  same-colour neighbours), the one-pixel border copied from its neighbour as OpenCV does.

On 8-bit frames the two paths agree to at most 1 grey level (test/pipeline/test_color_convert.py;
on the test images they are equal).

Encoding names are those of sensor_msgs/image_encodings.hpp: ``yuv422`` is UYVY (U Y0 V Y1),
``yuv422_yuy2`` is YUYV (Y0 U Y1 V); ``bayer_rggb8`` has R at row 0, column 0. OpenCV names a
Bayer pattern by the second row's second and third pixels, so ROS ``rggb`` is OpenCV ``BG``.
The inverses (:func:`from_rgb`) make such frames from RGB images, for seg-replay and tests.
"""

from typing import Dict, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from seg_perception.image_codec import CONVERTED, ImageFormatError

# yuv422 encodings -> (index of Y0, U, Y1, V in each 4-byte pair of pixels)
YUV422: Dict[str, Tuple[int, int, int, int]] = {
    'yuv422': (1, 0, 3, 2),       # UYVY
    'yuv422_yuy2': (0, 1, 2, 3),  # YUYV
}
# Bayer encodings -> colours of the 2x2 tile (row 0 left, row 0 right, row 1 left, row 1 right)
BAYER: Dict[str, str] = {
    'bayer_rggb8': 'RGGB',
    'bayer_bggr8': 'BGGR',
    'bayer_gbrg8': 'GBRG',
    'bayer_grbg8': 'GRBG',
}
_CV_CODES: Dict[str, int] = {
    'yuv422': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2,
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB,
    'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB,
    'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
}
assert set(_CV_CODES) == set(YUV422) | set(BAYER) == set(CONVERTED)

# OpenCV's BT.601 video-range YUV->RGB coefficients (fixed point, 20 fractional bits).
_SHIFT = float(1 << 20)
_CY, _CUB, _CUG, _CVG, _CVR = (1220542 / _SHIFT, 2116026 / _SHIFT, -409993 / _SHIFT,
                               -852492 / _SHIFT, 1673527 / _SHIFT)
# Bilinear demosaicing kernels: green from its 4 direct neighbours, red/blue from 2 or 4.
_KERNEL_G = ((0., 1., 0.), (1., 4., 1.), (0., 1., 0.))
_KERNEL_RB = ((1., 2., 1.), (2., 4., 2.), (1., 2., 1.))


def _check(image: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, C) uint8 view of a decoded raw frame; ImageFormatError unless it fits encoding."""
    if encoding not in CONVERTED:
        raise ImageFormatError(f'encoding {encoding!r} is not converted here '
                               f'({", ".join(CONVERTED)})')
    c, w_mult, h_mult = CONVERTED[encoding]
    if image.ndim == 2 and c == 1:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != c:
        raise ImageFormatError(f'{encoding} frame must be (H, W, {c}) uint8, got {image.shape} '
                               f'{image.dtype}')
    h, w = image.shape[:2]
    if w % w_mult or h % h_mult:
        raise ImageFormatError(f'{encoding} needs width a multiple of {w_mult} and height a '
                               f'multiple of {h_mult}, got width={w} height={h}')
    return image


def to_rgb_numpy(image: np.ndarray, encoding: str) -> np.ndarray:
    """Convert with OpenCV: (H, W, C) raw frame -> (H, W, 3) uint8 RGB."""
    image = _check(image, encoding)
    src = image if CONVERTED[encoding][0] == 2 else image[:, :, 0]  # Bayer: (H, W)
    return cv2.cvtColor(src, _CV_CODES[encoding])  # (H, W, 3)


def _yuv422_torch(raw: torch.Tensor, encoding: str) -> torch.Tensor:
    """(H, W, 2) uint8 -> (3, H, W) float32 RGB in 0..255 (integers, as OpenCV rounds)."""
    h, w = raw.shape[:2]
    quads = raw.reshape(h, w // 2, 4).float()  # (H, W/2, 4): one chroma pair per 2 pixels
    iy0, iu, iy1, iv = YUV422[encoding]
    y = torch.stack((quads[..., iy0], quads[..., iy1]), dim=-1).reshape(h, w)  # (H, W)
    u = (quads[..., iu] - 128.0).repeat_interleave(2, dim=1)  # (H, W)
    v = (quads[..., iv] - 128.0).repeat_interleave(2, dim=1)  # (H, W)
    luma = (y - 16.0).clamp_min_(0.0) * _CY
    rgb = torch.stack((luma + _CVR * v, luma + _CVG * v + _CUG * u, luma + _CUB * u))
    return rgb.add_(0.5).floor_().clamp_(0.0, 255.0)  # (3, H, W)


def _bayer_torch(raw: torch.Tensor, encoding: str) -> torch.Tensor:
    """(H, W, 1) uint8 mosaic -> (3, H, W) float32 RGB in 0..255, bilinear demosaicing."""
    h, w = raw.shape[:2]
    tile = torch.zeros(3, 2, 2, device=raw.device)  # (3, 2, 2): which colour each site holds
    for i, colour in enumerate(BAYER[encoding]):
        tile['RGB'.index(colour), i // 2, i % 2] = 1.0
    mask = tile.repeat(1, h // 2, w // 2)[None]  # (1, 3, H, W)
    planes = raw.reshape(1, 1, h, w).float() * mask  # (1, 3, H, W), zero where not sampled
    kernel = torch.tensor((_KERNEL_RB, _KERNEL_G, _KERNEL_RB), device=raw.device)[:, None]
    # Inside the image each output's kernel weights over sampled sites sum to 4.
    total = F.conv2d(planes, kernel, padding=1, groups=3)  # (1, 3, H, W)
    rgb = total.mul_(0.25).add_(0.5).floor_()[0]  # (3, H, W)
    # OpenCV repeats the second row/column into the border ones; so do we, for equal outputs.
    rgb[:, 0], rgb[:, -1] = rgb[:, 1], rgb[:, -2]
    rgb[:, :, 0], rgb[:, :, -1] = rgb[:, :, 1], rgb[:, :, -2]
    return rgb


def to_rgb_torch(raw: torch.Tensor, encoding: str) -> torch.Tensor:
    """Convert on ``raw``'s device: (H, W, C) uint8 tensor -> (3, H, W) float32 RGB 0..255."""
    if encoding in YUV422:
        return _yuv422_torch(raw, encoding)
    if encoding in BAYER:
        return _bayer_torch(raw, encoding)
    raise ImageFormatError(f'encoding {encoding!r} is not converted here ({", ".join(CONVERTED)})')


def to_rgb_tensor(image: np.ndarray, encoding: str, device: torch.device,
                  backend: str = 'auto') -> torch.Tensor:
    """
    Convert a decoded raw frame to (1, 3, H, W) float32 RGB in 0..255 on ``device``.

    ``backend`` 'auto' uses OpenCV for the CPU and torch elsewhere (the raw bytes, 1-2 bytes a
    pixel, are what crosses to the GPU); 'opencv' and 'torch' force one path.
    """
    image = _check(image, encoding)
    device = torch.device(device)
    if backend == 'auto':
        backend = 'opencv' if device.type == 'cpu' else 'torch'
    if backend == 'opencv':
        rgb = torch.from_numpy(to_rgb_numpy(image, encoding)).to(device)  # (H, W, 3) uint8
        return rgb.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)
    if backend != 'torch':
        raise ValueError(f'backend {backend!r} not in auto, opencv, torch')
    src = np.ascontiguousarray(image)
    if not src.flags.writeable:  # a view on a message's bytes; torch wants writable memory
        src = src.copy()
    raw = torch.from_numpy(src).to(device, non_blocking=True)  # (H, W, C) uint8
    return to_rgb_torch(raw, encoding).unsqueeze(0)  # (1, 3, H, W)


def from_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """
    Make a raw frame from an (H, W, 3) uint8 RGB image: yuv422 (H, W, 2) or Bayer (H, W, 1).

    YUV uses the BT.601 video-range matrix (the inverse of OpenCV's), chroma averaged over each
    pixel pair; Bayer keeps, at each site, the one colour the pattern samples there.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageFormatError(f'expected an (H, W, 3) uint8 RGB image, got {rgb.shape} '
                               f'{rgb.dtype}')
    if encoding not in CONVERTED:
        raise ImageFormatError(f'encoding {encoding!r} is not converted here '
                               f'({", ".join(CONVERTED)})')
    h, w = rgb.shape[:2]
    _, w_mult, h_mult = CONVERTED[encoding]
    if w % w_mult or h % h_mult:
        raise ImageFormatError(f'{encoding} needs width a multiple of {w_mult} and height a '
                               f'multiple of {h_mult}, got width={w} height={h}')
    if encoding in BAYER:
        tile = np.array(['RGB'.index(c) for c in BAYER[encoding]]).reshape(2, 2)
        index = np.tile(tile, (h // 2, w // 2))  # (H, W) channel sampled at each site
        return np.take_along_axis(rgb, index[:, :, None], axis=2)  # (H, W, 1)
    r, g, b = np.moveaxis(rgb.astype(np.float32), 2, 0)  # (H, W) each
    y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b
    u = u.reshape(h, w // 2, 2).mean(axis=2)  # (H, W/2)
    v = v.reshape(h, w // 2, 2).mean(axis=2)  # (H, W/2)
    quads = np.empty((h, w // 2, 4), dtype=np.float32)  # (H, W/2, 4)
    iy0, iu, iy1, iv = YUV422[encoding]
    quads[..., iy0], quads[..., iy1] = y[:, 0::2], y[:, 1::2]
    quads[..., iu], quads[..., iv] = u, v
    return np.clip(np.rint(quads), 0, 255).astype(np.uint8).reshape(h, w, 2)  # (H, W, 2)
