"""
Raw image buffers as sensor_msgs/Image carries them, checked and viewed as numpy (no ROS).

Decoding is zero-copy: the array returned is a view on the message's bytes. Camera encodings
that are not RGB channels (yuv422, Bayer) are viewed as they are, (H, W, 2) and (H, W, 1), and
converted to RGB later, on the model's device (:mod:`seg_perception.color_convert`). Compressed
images (sensor_msgs/CompressedImage, jpeg or png as image_transport publishes them) are decoded
with OpenCV, after their bytes are checked to be that format and their size is read from the
header (PNG IHDR, JPEG SOFn), so a frame declaring more than ``max_pixels`` is refused before
anything is allocated for it.
"""

from dataclasses import dataclass
import re
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

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
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r'\d+')


class ImageFormatError(ValueError):
    """
    A frame whose fields do not describe its buffer; the message says which field.

    ``kind`` names the fault without its values (sizes, strings), so that repeats of one fault
    with changing values can be told from a new fault (log throttling).
    """

    def __init__(self, message: str, kind: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind if kind is not None else fault_kind(message)


def fault_kind(message: str) -> str:
    """Return the message with quoted values and numbers blanked out (80 characters at most)."""
    return _NUMBER.sub('#', _QUOTED.sub("'...'", message))[:80]


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


# Leading bytes of the formats taken, and of others told apart in error messages.
_MAGIC = {'jpeg': (b'\xff\xd8\xff',), 'png': (b'\x89PNG\r\n\x1a\n',)}
_OTHER_MAGIC = {'bmp': (b'BM',), 'tiff': (b'II*\x00', b'MM\x00*'), 'gif': (b'GIF87a', b'GIF89a'),
                'jpeg 2000': (b'\x00\x00\x00\x0cjP  ',), 'qoi': (b'qoif',)}
# JPEG markers that start a frame header (SOF0..SOF15 without DHT, JPG and DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MAX_SEGMENTS = 4096  # real files have tens before the frame header


def sniff_format(data: object) -> Optional[str]:
    """Name the image format the data's leading bytes belong to, or None."""
    head = np.frombuffer(data, dtype=np.uint8)[:16].tobytes()
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'webp'
    for name, magics in list(_MAGIC.items()) + list(_OTHER_MAGIC.items()):
        if any(head.startswith(m) for m in magics):
            return name
    return None


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
        if lowered or sniffed not in _MAGIC:
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


def compressed_size(codec: str, data: object) -> Tuple[int, int]:
    """
    Return (width, height) from a png's IHDR chunk or a jpeg's frame header, not decoding.

    ImageFormatError when the header is missing, truncated or declares an empty image.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if codec == 'png':
        head = buf[:26].tobytes()
        if len(head) < 26 or head[12:16] != b'IHDR':
            raise ImageFormatError(f'data ({buf.size} bytes) does not decode as png: no IHDR '
                                   'chunk after the signature', kind='png without IHDR')
        width, height = int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
    elif codec == 'jpeg':
        width, height = _jpeg_size(buf)
    else:
        raise ValueError(f'codec {codec!r} is neither jpeg nor png')
    if width <= 0 or height <= 0:
        raise ImageFormatError(f'{codec} header declares an empty image: {width}x{height}',
                               kind=f'{codec} declares an empty image')
    return width, height


def _jpeg_size(buf: np.ndarray) -> Tuple[int, int]:
    """Walk the jpeg's marker segments up to the first SOFn; return its (width, height)."""
    n, i = buf.size, 2  # after SOI
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i + 4 > n or buf[i] != 0xFF:
            break
        marker = int(buf[i + 1])
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = (int(buf[i + 2]) << 8) | int(buf[i + 3])
        if marker in _JPEG_SOF:
            if i + 9 > n or length < 8:
                break
            height = (int(buf[i + 5]) << 8) | int(buf[i + 6])  # (sample precision at i + 4)
            width = (int(buf[i + 7]) << 8) | int(buf[i + 8])
            return width, height
        if length < 2:
            break
        i += 2 + length
    raise ImageFormatError(f'data ({n} bytes) does not decode as jpeg: no frame header (SOFn '
                           'marker) found', kind='jpeg without frame header')


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
