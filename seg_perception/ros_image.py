"""
Convert sensor_msgs images <-> numpy frames for the node (checks in image_codec, no copies in).

Incoming ``Image`` data is viewed, not copied: :func:`frame_from_serialized` reads the fields of
a serialized message (a raw subscription) and views its pixels in the received bytes, skipping
rclpy's conversion to a Python message (~20 ms per 6 MB on these machines, under load).
Outgoing messages are built two ways:

* :func:`image_msg`: an ``Image`` object, data assigned as ``bytes`` (assigning a numpy array
  to ``Image.data`` converts it element by element, ~350 ms per 6 MB);
* :func:`serialized_image` / :func:`serialized_compressed`: the message already serialized (CDR,
  as the ROS 2 middlewares put it on the wire), for ``Publisher.publish(bytes)``. The pixels are
  copied once, from the worker's array into the serialized bytes; the ``Image`` route copies them
  four times (to ``bytes``, to the message's ``array('B')``, to the C message, into the CDR
  buffer) before the middleware's own copy.
"""

import struct
import sys
from typing import Tuple

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_perception.image_codec import (decode, decode_compressed, encode, ImageFormatError,
                                        RawImage)
from seg_perception.pipeline import Frame

CONFIDENCE_ENCODINGS = ('mono8', '32FC1')
# CDR encapsulation header: plain CDR, little endian (the byte order of everything after it).
_CDR_LE = b'\x00\x01\x00\x00'
# OpenCV conversions to the BGR order JPEG encoding expects, per overlay encoding.
_TO_BGR = {'rgb8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGBA2BGR, 'bgra8': cv2.COLOR_BGRA2BGR}


def frame_from_image(msg: Image) -> Frame:
    """View ``msg.data`` as a pipeline Frame; ImageFormatError names the bad field."""
    raw = RawImage(encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step,
                   data=msg.data)
    return Frame(decode(raw), msg.encoding)  # (H, W, C) view


class _CdrReader:
    """Reads the fields of a serialized message (CDR, either byte order) in order."""

    def __init__(self, data: object) -> None:
        self.data = memoryview(data).cast('B')
        if self.data.nbytes < 4 or self.data[0] != 0 or self.data[1] not in (0, 1):
            raise ImageFormatError('serialized message does not start with a CDR header')
        self.order = '<' if self.data[1] == 1 else '>'
        self.pos = 0  # from the end of the 4-byte encapsulation header

    def _take(self, n: int, align: int) -> int:
        self.pos += -self.pos % align
        start = 4 + self.pos
        if start + n > self.data.nbytes:
            raise ImageFormatError(f'serialized message is truncated ({self.data.nbytes} bytes)')
        self.pos += n
        return start

    def u32(self) -> int:
        return struct.unpack_from(self.order + 'I', self.data, self._take(4, 4))[0]

    def i32(self) -> int:
        return struct.unpack_from(self.order + 'i', self.data, self._take(4, 4))[0]

    def u8(self) -> int:
        return self.data[self._take(1, 1)]

    def string(self) -> str:
        n = self.u32()
        start = self._take(n, 1)
        return bytes(self.data[start:start + max(n - 1, 0)]).decode(errors='replace')

    def octets(self) -> memoryview:
        n = self.u32()
        start = self._take(n, 1)
        return self.data[start:start + n]  # a view: no copy


def frame_from_serialized(data: object) -> Tuple[Header, Frame]:
    """
    Read a serialized sensor_msgs/Image: its header and a Frame viewing its pixels (no copy).

    ImageFormatError names the bad field, as :func:`frame_from_image` does.
    """
    cdr = _CdrReader(data)
    header = Header()
    header.stamp.sec, header.stamp.nanosec = cdr.i32(), cdr.u32()
    header.frame_id = cdr.string()
    height, width = cdr.u32(), cdr.u32()
    encoding = cdr.string()
    cdr.u8()  # is_bigendian: 8-bit encodings only
    step = cdr.u32()
    pixels = cdr.octets()
    raw = RawImage(encoding=encoding, height=height, width=width, step=step, data=pixels)
    return header, Frame(decode(raw), encoding)  # (H, W, C) view


def frame_from_compressed(msg: CompressedImage) -> Frame:
    """Decode (OpenCV) a pipeline Frame from a jpeg or png CompressedImage."""
    image, encoding = decode_compressed(msg.format, msg.data)
    return Frame(image, encoding)


def image_msg(header: Header, image: np.ndarray, encoding: str) -> Image:
    """Build an Image with ``header``: ``image`` uint8 (H, W[, C]) or float32 (H, W) 32FC1."""
    msg = Image(header=header, encoding=encoding)
    if encoding == '32FC1':
        if image.dtype != np.float32 or image.ndim != 2:
            raise ImageFormatError(f'32FC1 needs an (H, W) float32 array, got {image.shape} '
                                   f'{image.dtype}')
        msg.height, msg.width = image.shape
        msg.step = msg.width * 4
        msg.is_bigendian = sys.byteorder == 'big'
        msg.data = np.ascontiguousarray(image).tobytes()
        return msg
    msg.height, msg.width, msg.step, msg.data = encode(image)
    return msg


def confidence_image(confidence: np.ndarray, encoding: str) -> np.ndarray:
    """Convert (H, W) confidence in [0, 1] to the output encoding: uint8 x 255 or float32."""
    if encoding == 'mono8':
        return np.rint(confidence * 255.0).astype(np.uint8)  # (H, W)
    if encoding == '32FC1':
        return confidence.astype(np.float32, copy=False)  # (H, W)
    raise ValueError(f'confidence encoding {encoding!r} not in {CONFIDENCE_ENCODINGS}')


def is_zero_stamp(header: Header) -> bool:
    """Tell whether a publisher left the stamp unset (no latency can be measured)."""
    return header.stamp.sec == 0 and header.stamp.nanosec == 0


class _Cdr:
    """Little-endian CDR writer for the fields before a message's data (alignment from 0)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def _align(self, n: int) -> None:
        self.buf += bytes(-len(self.buf) % n)

    def u32(self, value: int) -> None:
        self._align(4)
        self.buf += struct.pack('<I', value)

    def i32(self, value: int) -> None:
        self._align(4)
        self.buf += struct.pack('<i', value)

    def u8(self, value: int) -> None:
        self.buf.append(value)

    def string(self, text: str) -> None:
        raw = text.encode() + b'\0'
        self.u32(len(raw))
        self.buf += raw

    def header(self, header: Header) -> None:
        self.i32(header.stamp.sec)
        self.u32(header.stamp.nanosec)
        self.string(header.frame_id)


def _with_data(cdr: _Cdr, data: object, nbytes: int) -> bytes:
    """Join the fields so far, the uint8[] length and the data (one copy) into a message."""
    cdr.u32(nbytes)
    return b''.join((_CDR_LE, cdr.buf, data))


def serialized_image(header: Header, image: np.ndarray, encoding: str) -> bytes:
    """
    Serialize a sensor_msgs/Image of ``image`` for ``Publisher.publish(bytes)``.

    ``image`` is (H, W[, C]) uint8, or (H, W) float32 for 32FC1; rows are packed (step = width x
    pixel size). The result deserializes to what :func:`image_msg` builds.
    """
    if encoding == '32FC1':
        if image.dtype != np.float32 or image.ndim != 2:
            raise ImageFormatError(f'32FC1 needs an (H, W) float32 array, got {image.shape} '
                                   f'{image.dtype}')
        step, bigendian = image.shape[1] * 4, sys.byteorder == 'big'
    else:
        if image.dtype != np.uint8:
            raise ImageFormatError(f'expected uint8 image, got {image.dtype}')
        step = image.shape[1] * (1 if image.ndim == 2 else image.shape[2])
        bigendian = False
    pixels = np.ascontiguousarray(image)
    cdr = _Cdr()
    cdr.header(header)
    cdr.u32(image.shape[0])
    cdr.u32(image.shape[1])
    cdr.string(encoding)
    cdr.u8(int(bigendian))
    cdr.u32(step)
    return _with_data(cdr, memoryview(pixels).cast('B'), pixels.nbytes)


def serialized_compressed(header: Header, fmt: str, data: object) -> bytes:
    """Serialize a sensor_msgs/CompressedImage (``data`` bytes-like) for publish(bytes)."""
    view = memoryview(data).cast('B')
    cdr = _Cdr()
    cdr.header(header)
    cdr.string(fmt)
    return _with_data(cdr, view, view.nbytes)


def jpeg_overlay(image: np.ndarray, encoding: str, quality: int) -> Tuple[str, np.ndarray]:
    """
    JPEG-encode an overlay as image_transport's compressed plugin does.

    Return (format, data): colour goes to JPEG in BGR order and the format says so,
    e.g. ``'rgb8; jpeg compressed bgr8'``; an alpha channel is dropped.
    """
    if encoding not in _TO_BGR and encoding != 'bgr8':
        raise ImageFormatError(f'no JPEG overlay for encoding {encoding!r}')
    bgr = image if encoding == 'bgr8' else cv2.cvtColor(image, _TO_BGR[encoding])
    ok, data = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageFormatError(f'JPEG encoding of a {image.shape} {encoding} image failed')
    return f'{encoding}; jpeg compressed bgr8', data  # (N,) uint8
