"""
An image file's size from its header (PNG IHDR, JPEG SOFn), read before anything is decoded.

Dataset readers refuse a file declaring more pixels than they take before it is decoded; the
node's compressed frames (:mod:`seg_perception.image_codec`) are checked the same way. The
errors are :class:`ImageFormatError`: the message says which field, ``kind`` names the fault
without its values.
"""

import re
from typing import Optional, Tuple

import numpy as np

_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r'\d+')
# Leading bytes of the formats taken, and of others told apart in error messages.
MAGIC = {'jpeg': (b'\xff\xd8\xff',), 'png': (b'\x89PNG\r\n\x1a\n',)}
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
    for name, magics in list(MAGIC.items()) + list(_OTHER_MAGIC.items()):
        if any(head.startswith(m) for m in magics):
            return name
    return None


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
