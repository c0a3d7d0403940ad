"""
Raw image buffers as sensor_msgs/Image carries them, checked and viewed as numpy (no ROS).

Decoding is zero-copy: the array returned is a view on the message's bytes. Camera encodings
that are not RGB channels (yuv422, Bayer) are viewed as they are, (H, W, 2) and (H, W, 1), and
converted to RGB later, on the model's device (:mod:`seg_perception.color_convert`). Compressed
images (sensor_msgs/CompressedImage, jpeg or png as image_transport publishes them) are decoded
with OpenCV, after their bytes are checked to be that format and their size is read from the
header (PNG IHDR, JPEG SOFn; :mod:`seg_training.datasets.image_header`, which dataset readers use
too), so a frame declaring more than ``max_pixels`` is refused before anything is allocated for
it.
"""

from dataclasses import dataclass
import re
from typing import Dict, Tuple

import cv2
import numpy as np

from seg_training.datasets.image_header import (compressed_size, ImageFormatError, MAGIC,
                                                sniff_format)

# encoding -> (channels, RGB channel order in the buffer or None for mono, has alpha)
ENCODINGS: Dict[str, Tuple[int, Tuple[int, int, int], bool]] = {
    'rgb8': (3, (0, 1, 2), False),
    'bgr8': (3, (2, 1, 0), False),
    'rgba8': (4, (0, 1, 2), True),
    'bgra8': (4, (2, 1, 0), True),
    'mono8': (1, (0, 0, 0), False),
}
# Raw camera encodings converted to RGB (seg_perception.color_convert) before the network:
# encoding -> (bytes per pixel in the decoded view, width multiple, height multiple)
CONVERTED: Dict[str, Tuple[int, int, int]] = {
    'yuv422': (2, 2, 1),       # UYVY: U Y0 V Y1, one chroma pair per two pixels
    'yuv422_yuy2': (2, 2, 1),  # YUYV: Y0 U Y1 V
    'bayer_rggb8': (1, 2, 2),  # 2x2 colour-filter tile, row by row
    'bayer_bggr8': (1, 2, 2),
    'bayer_gbrg8': (1, 2, 2),
    'bayer_grbg8': (1, 2, 2),
}
SUPPORTED = (*ENCODINGS, *CONVERTED)


# Largest frame taken by default (width x height): 16.8 MP, more than automotive cameras send.
MAX_INPUT_PIXELS = 4096 * 4096


def field_repr(value: object, limit: int = 40) -> str:
    """repr() of a field value, cut to about ``limit`` characters with its length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f'{text[:limit]}... ({size} characters)'


@dataclass(frozen=True)
class RawImage:
    """The fields of sensor_msgs/Image that decoding needs."""

    encoding: str
    height: int
    width: int
    step: int
    data: object  # bytes-like (bytes, bytearray, array('B'), memoryview, numpy uint8)


def channels(encoding: str) -> int:
    """Bytes per pixel of an encoding (C of its decoded view); ImageFormatError if unsupported."""
    if encoding in ENCODINGS:
        return ENCODINGS[encoding][0]
    if encoding in CONVERTED:
        return CONVERTED[encoding][0]
    raise ImageFormatError(
        f'unsupported encoding {field_repr(encoding)} (supported: {", ".join(SUPPORTED)})')


def overlay_encoding(encoding: str) -> str:
    """Return the overlay image's encoding: the input's own; rgb8 for mono8, yuv422 and Bayer."""
    channels(encoding)
    return encoding if encoding in ENCODINGS and encoding != 'mono8' else 'rgb8'


def decode(raw: RawImage) -> np.ndarray:
    """(H, W, C) uint8 view of the image; ImageFormatError names the bad field."""
    c = channels(raw.encoding)
    if raw.height <= 0 or raw.width <= 0:
        zero = [n for n, v in (('height', raw.height), ('width', raw.width)) if v <= 0]
        raise ImageFormatError(f'zero-size image: height={raw.height} width={raw.width}',
                               kind='zero ' + ' and '.join(zero))
    if raw.encoding in CONVERTED:
        _, w_mult, h_mult = CONVERTED[raw.encoding]
        if raw.width % w_mult:
            raise ImageFormatError(f'width {raw.width} is odd; {raw.encoding} needs an even width')
        if raw.height % h_mult:
            raise ImageFormatError(
                f'height {raw.height} is odd; {raw.encoding} needs an even height')
    row = raw.width * c
    if raw.step < row:
        raise ImageFormatError(
            f'step {raw.step} is smaller than one row ({raw.width} px x {c} bytes = {row})')
    buf = np.frombuffer(raw.data, dtype=np.uint8)
    expected = raw.step * raw.height
    if buf.size != expected:
        raise ImageFormatError(
            f'data has {buf.size} bytes, step x height = {raw.step} x {raw.height} = {expected}',
            kind='data shorter than step x height' if buf.size < expected
            else 'data longer than step x height')
    rows = buf.reshape(raw.height, raw.step)  # (H, step)
    return rows[:, :row].reshape(raw.height, raw.width, c)  # (H, W, C), a view


def encode(image: np.ndarray) -> Tuple[int, int, int, bytes]:
    """(height, width, step, data) of an (H, W) or (H, W, C) uint8 array, rows packed."""
    if image.dtype != np.uint8:
        raise ImageFormatError(f'expected uint8 image, got {image.dtype}')
    h, w = image.shape[:2]
    c = 1 if image.ndim == 2 else image.shape[2]
    return h, w, w * c, np.ascontiguousarray(image).tobytes()


def compressed_codec(fmt: str, data: object = b'') -> str:
    """
    Tell 'jpeg' or 'png' from a sensor_msgs/CompressedImage ``format`` string and its data.

    Accepts image_transport's strings ('rgb8; jpeg compressed bgr8', 'bgr8; png compressed bgr8')
    and bare ones ('jpeg', 'jpg', 'png'); an empty format is told from the data's leading bytes.
    The data must start with the signature of the format named: BMP, TIFF or WebP bytes labelled
    jpeg are refused.
    """
    sniffed = sniff_format(data)
    lowered = fmt.strip().lower()
    shown = field_repr(fmt)
    if 'compresseddepth' in lowered:
        raise ImageFormatError(f'format {shown}: compressedDepth images are not supported')
    tokens = set(re.split(r'[;\s]+', lowered)) - {''}
    declared = 'jpeg' if tokens & {'jpeg', 'jpg'} else 'png' if 'png' in tokens else None
    if declared is None:
        if lowered or sniffed not in MAGIC:
            raise ImageFormatError(f'format {shown} is neither jpeg nor png')
        return sniffed
    if sniffed != declared:
        if sniffed is not None:
            raise ImageFormatError(f'format {shown} says {declared} but the data is {sniffed}')
        head = np.frombuffer(data, dtype=np.uint8)[:8].tobytes()
        raise ImageFormatError(f'format {shown} says {declared} but the data does not start '
                               f'with the {declared} signature (first bytes: {head.hex(" ")})',
                               kind=f'not {declared} data')
    return declared


def check_pixels(width: int, height: int, max_pixels: int, what: str = 'image') -> None:
    """Raise ImageFormatError, the size in its message, when width x height > ``max_pixels``."""
    if width * height > max_pixels:
        raise ImageFormatError(f'{what} of {width}x{height} = {width * height} pixels is over '
                               f'max_input_pixels {max_pixels}', kind=f'{what} too large')


def check_compressed(fmt: str, data: object,
                     max_pixels: int = MAX_INPUT_PIXELS) -> Tuple[str, int, int]:
    """
    Check a CompressedImage without decoding it: (codec, width, height).

    The format string and the data's signature must agree, the header must give a size, and the
    size must be at most ``max_pixels``; ImageFormatError otherwise.
    """
    codec = compressed_codec(fmt, data)
    width, height = compressed_size(codec, data)
    check_pixels(width, height, max_pixels, codec)
    return codec, width, height


def decode_compressed(fmt: str, data: object,
                      max_pixels: int = MAX_INPUT_PIXELS) -> Tuple[np.ndarray, str]:
    """
    Decode a CompressedImage to an (H, W, C) uint8 image and its encoding (bgr8, bgra8, mono8).

    The header is checked first (:func:`check_compressed`): a frame over ``max_pixels`` is refused
    before OpenCV allocates it. OpenCV decodes colour to BGR order, as image_transport encodes
    it; the image is returned in that order with the matching encoding rather than converted back.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageFormatError(f'format {field_repr(fmt)}: data is empty')
    codec, width, height = check_compressed(fmt, buf, max_pixels)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageFormatError(f'data ({buf.size} bytes) does not decode as {codec}')
    if image.dtype != np.uint8:
        raise ImageFormatError(f'{codec} data holds {image.dtype} pixels; only 8-bit images '
                               'are supported')
    if image.shape[:2] != (height, width):
        raise ImageFormatError(f'{codec} header says {width}x{height} but the data decodes to '
                               f'{image.shape[1]}x{image.shape[0]}')
    if image.ndim == 2:
        return image[:, :, None], 'mono8'  # (H, W, 1)
    encoding = {1: 'mono8', 3: 'bgr8', 4: 'bgra8'}.get(image.shape[2])
    if encoding is None:
        raise ImageFormatError(f'{codec} data has {image.shape[2]} channels (1, 3 or 4 expected)')
    return image, encoding
