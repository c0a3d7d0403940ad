"""
Convert sensor_msgs images <-> numpy frames for the node (checks in image_codec, no copies in).

Incoming ``Image`` data is viewed, not copied; outgoing data is assigned as ``bytes`` because
assigning a numpy array to ``Image.data`` converts it element by element (~350 ms per 6 MB).
"""

import sys

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_perception.image_codec import (decode, decode_compressed, encode, ImageFormatError,
                                        RawImage)
from seg_perception.pipeline import Frame

CONFIDENCE_ENCODINGS = ('mono8', '32FC1')


def frame_from_image(msg: Image) -> Frame:
    """View ``msg.data`` as a pipeline Frame; ImageFormatError names the bad field."""
    raw = RawImage(encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step,
                   data=msg.data)
    return Frame(decode(raw), msg.encoding)  # (H, W, C) view


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
