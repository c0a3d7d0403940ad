"""Small files that declare huge images: a real all-black png and a jpeg with a patched size."""

import struct
import zlib

import cv2
import numpy as np


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def zero_png(width: int, height: int, rows: int = 100) -> bytes:
    """
    Return a valid 8-bit grey png of ``width`` x ``height`` zeros, ~1/1000 of its pixel count.

    One deflate block of ``rows`` zero rows (full flush: byte aligned, no shared history) is
    repeated, so a 30000x30000 file takes milliseconds to make.
    """
    assert height % rows == 0
    co = zlib.compressobj(9)
    block = bytes((width + 1) * rows)  # each row: filter byte 0, then the pixels
    first = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    assert first[2:] == again  # the zlib header, then identical blocks
    n = (width + 1) * height
    adler = (n % 65521) << 16 | 1  # adler32 of n zero bytes
    stream = first + again * (height // rows - 1) + b'\x03\x00' + struct.pack('>I', adler)
    return (b'\x89PNG\r\n\x1a\n'
            + _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + _chunk(b'IDAT', stream) + _chunk(b'IEND', b''))


def jpeg_declaring(width: int, height: int) -> bytes:
    """Return a small jpeg whose frame header (SOF0) says ``width`` x ``height``."""
    ok, buf = cv2.imencode('.jpg', np.full((16, 24, 3), 90, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    sof = data.index(b'\xff\xc0')
    data[sof + 5:sof + 9] = struct.pack('>HH', height, width)
    return bytes(data)
