"""
rosbag2 files through the ``rosbags`` library: image messages <-> numpy, no rclpy.

``seg-bag`` and ``seg-replay`` read bags written by ``ros2 bag record`` or by ``rosbags`` itself
(mcap and sqlite3 storage). Messages stay CDR bytes until an image is needed; decoding goes through
:mod:`seg_perception.image_codec`, so a bag frame is checked exactly like a live one.
"""

import contextlib
from dataclasses import dataclass
import functools
import logging
import os
from pathlib import Path
import struct
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader
from rosbags.serde import SerdeError
from rosbags.typesys import get_typestore, Stores

from seg_perception import image_codec

_logger = logging.getLogger(__name__)

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STRING = 'std_msgs/msg/String'
CLOCK = 'rosgraph_msgs/msg/Clock'
STORAGE_FORMATS = ('mcap', 'sqlite3')
PathLike = Union[str, os.PathLike]


class BagError(RuntimeError):
    """A bag that cannot be used as asked; the message names the bag, topic or time."""


@functools.lru_cache(maxsize=1)
def typestore() -> Any:
    """
    Message types of the newest ROS 2 distribution this rosbags knows (Kilted, else older).

    sensor_msgs/Image, CompressedImage and std_msgs/Header serialise identically since Foxy, so
    bags from Humble and Jazzy read the same.
    """
    for name in ('ROS2_KILTED', 'ROS2_JAZZY', 'ROS2_HUMBLE'):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    raise RuntimeError('rosbags has no ROS 2 Humble or newer type store')  # pragma: no cover


def format_time(ns: int) -> str:
    """Nanoseconds since the epoch as 'sec.nanosec' (how ROS prints a stamp)."""
    return f'{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}'


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (any object with sec and nanosec) in nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@contextlib.contextmanager
def open_reader(path: PathLike) -> Iterator[Reader]:
    """Open a bag as a context manager; BagError names the file."""
    path = Path(path)
    if not path.exists():
        raise BagError(f'{path}: no such bag (expected a rosbag2 folder, .mcap or .db3 file)')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as e:  # rosbags raises ReaderError, FileNotFoundError, apsw and struct errors
        raise BagError(f'{path}: not a readable rosbag2 bag: {e}') from e
    try:
        yield reader
    finally:
        reader.close()


def storage_format(reader: Reader) -> str:
    """'mcap' or 'sqlite3', the storage plugin of an opened bag."""
    storage = reader.storage
    inner = getattr(storage, 'storages', None) or [storage]
    name = type(inner[0]).__name__.lower()
    for fmt in STORAGE_FORMATS:
        if fmt in name:
            return fmt
    raise BagError(f'{reader.path}: unknown storage {type(inner[0]).__name__}')  # pragma: no cover


def image_topics(reader: Reader) -> Dict[str, str]:
    """Topic -> message type of every Image and CompressedImage topic in an opened bag."""
    return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


def select_connections(reader: Reader, topics: Sequence[str]) -> List[Connection]:
    """Return the connections of ``topics``; BagError lists the image topics if one is missing."""
    available = image_topics(reader)
    listed = ', '.join(f'{t} ({m.rsplit("/", 1)[-1]})' for t, m in sorted(available.items()))
    all_topics = {c.topic: c.msgtype for c in reader.connections}
    for topic in topics:
        if topic not in all_topics:
            raise BagError(f'{reader.path}: topic {topic} is not in the bag; its image topics '
                           f'are: {listed or "none"}')
        if all_topics[topic] not in IMAGE_TYPES:
            raise BagError(f'{reader.path}: topic {topic} has type {all_topics[topic]}, not an '
                           f'image; its image topics are: {listed or "none"}')
    wanted = set(topics)
    return [c for c in reader.connections if c.topic in wanted]


def read_messages(reader: Reader, connections: Sequence[Connection], start: Optional[int] = None
                  ) -> Iterator[Tuple[Connection, int, bytes]]:
    """
    Yield (connection, bag time ns, CDR bytes) in time order; a corrupt bag is a BagError.

    The error names the last message read so far, where the damage begins.
    """
    last = 'before the first message'
    it = reader.messages(connections=connections, start=start)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise BagError(f'{reader.path}: corrupt bag, reading stopped {last}: {e}') from e
        yield item
        last = f'after {item[0].topic} at {format_time(item[1])}'


@dataclass
class BagImage:
    """One decoded camera frame of a bag and the header it came with."""

    header: Any          # std_msgs/Header of the type store (stamp, frame_id)
    image: np.ndarray    # (H, W, C) uint8
    encoding: str        # one of image_codec.ENCODINGS


def deserialize(data: bytes, msgtype: str) -> Any:
    """Deserialise CDR bytes to a message of the type store (rosbags' SerdeError if bad)."""
    return typestore().deserialize_cdr(data, msgtype)


def decode_image(data: bytes, msgtype: str,
                 max_pixels: int = image_codec.MAX_INPUT_PIXELS) -> BagImage:
    """
    Decode an Image or CompressedImage; ImageFormatError names the bad field.

    A buffer too short for its own fields (truncated message) is an ImageFormatError too, and so
    is a frame over ``max_pixels`` (a compressed one is refused from its header, undecoded).
    """
    try:
        msg = deserialize(data, msgtype)
    except (SerdeError, AssertionError, IndexError, ValueError, struct.error,
            UnicodeDecodeError) as e:
        raise image_codec.ImageFormatError(
            f'{msgtype} message of {len(data)} bytes cannot be deserialised: '
            f'{type(e).__name__}: {e}') from e
    if msgtype == IMAGE:
        raw = image_codec.RawImage(encoding=msg.encoding, height=msg.height, width=msg.width,
                                   step=msg.step, data=msg.data)
        image = image_codec.decode(raw)
        image_codec.check_pixels(msg.width, msg.height, max_pixels)
        return BagImage(msg.header, image, msg.encoding)
    if msgtype == COMPRESSED_IMAGE:
        image, encoding = image_codec.decode_compressed(msg.format, msg.data, max_pixels)
        return BagImage(msg.header, image, encoding)
    raise image_codec.ImageFormatError(
        f'{msgtype} is not an image type ({", ".join(IMAGE_TYPES)})')


def image_cdr(header: Any, image: np.ndarray, encoding: str) -> bytes:
    """
    Serialise ``image`` ((H, W) or (H, W, C); uint8 or float32) as a sensor_msgs/Image.

    32FC1 images are written little-endian, as on every machine ROS 2 runs on.
    """
    ts = typestore()
    h, w = image.shape[:2]
    if image.dtype == np.float32:
        flat = np.ascontiguousarray(image, dtype='<f4').view(np.uint8).reshape(-1)
        step = w * 4 * (1 if image.ndim == 2 else image.shape[2])
    elif image.dtype == np.uint8:
        flat = np.ascontiguousarray(image).reshape(-1)
        step = flat.size // h
    else:
        raise image_codec.ImageFormatError(f'cannot write a {image.dtype} image as {encoding}')
    msg = ts.types[IMAGE](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                          step=step, data=flat)
    return bytes(ts.serialize_cdr(msg, IMAGE))


def compressed_cdr(header: Any, fmt: str, data: bytes) -> bytes:
    """Serialise a sensor_msgs/CompressedImage (``fmt`` as image_transport writes it)."""
    ts = typestore()
    msg = ts.types[COMPRESSED_IMAGE](header=header, format=fmt,
                                     data=np.frombuffer(data, dtype=np.uint8))
    return bytes(ts.serialize_cdr(msg, COMPRESSED_IMAGE))


def make_header(stamp: int, frame_id: str) -> Any:
    """Build a std_msgs/Header of the type store from a stamp in nanoseconds."""
    ts = typestore()
    time_msg = ts.types['builtin_interfaces/msg/Time'](
        sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)
    return ts.types['std_msgs/msg/Header'](stamp=time_msg, frame_id=frame_id)


def string_cdr(text: str) -> bytes:
    """Serialise a std_msgs/String."""
    ts = typestore()
    return bytes(ts.serialize_cdr(ts.types[STRING](data=text), STRING))


def camera_namespace(topic: str, msgtype: str = IMAGE) -> str:
    """
    Return the camera namespace of an image topic: '/front/image_raw' -> '/front'.

    image_transport's compressed topics drop their transport suffix first:
    '/front/image_raw/compressed' -> '/front'. A top-level topic ('/image') has namespace ''.
    """
    parts = topic.rstrip('/').split('/')
    if msgtype == COMPRESSED_IMAGE and len(parts) > 2 and parts[-1] == 'compressed':
        parts = parts[:-1]
    return '/'.join(parts[:-1])
