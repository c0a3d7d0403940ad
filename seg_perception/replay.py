"""
seg-replay: publish a recorded drive as live camera topics, for machines without a ROS install.

Sources: a rosbag2 (folder with metadata.yaml, or an .mcap/.db3 file) whose Image and
CompressedImage topics are published as recorded (the CDR bytes go out unchanged, headers
included); a folder of image files; a video file. Messages are paced by their recorded times,
scaled by ``--rate``, and ``/clock`` (rosgraph_msgs/Clock) carries the recorded time so a node
with ``use_sim_time`` follows. With a ROS install, ``ros2 bag play --clock`` does this for bags.
"""

import argparse
from dataclasses import dataclass
import importlib
import logging
from pathlib import Path
import signal
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from tqdm import tqdm

from seg_perception import image_codec, ros_types
from seg_perception.image_codec import CONVERTED
from seg_perception.ros_types import BagError
from seg_training.base.cli import HelpFormatter

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
BAG_SUFFIXES = ('.mcap', '.db3')
FORMATS = ('raw', 'jpeg', 'png')
# Raw encodings of folder and video frames: as the file holds them, or a camera driver's.
FRAME_ENCODINGS = ('auto', *CONVERTED)


@dataclass(frozen=True)
class ReplayMessage:
    """One message to publish: topic, ROS type, recorded time (ns) and serialised CDR bytes."""

    topic: str
    msgtype: str
    time: int
    data: bytes


class BagSource:
    """The image topics of a rosbag2, in recorded order, as the bag stores them."""

    def __init__(self, path: Path, topics: Sequence[str] = (), start_offset: float = 0.0) -> None:
        self.path = Path(path)
        self.start_offset = start_offset
        with ros_types.open_reader(self.path) as reader:
            available = ros_types.image_topics(reader)
            if not available:
                names = ', '.join(sorted(c.topic for c in reader.connections)) or 'none'
                raise BagError(
                    f'{self.path}: no Image or CompressedImage topics (topics: {names})')
            conns = ros_types.select_connections(reader, list(topics) or sorted(available))
            self.topics = {c.topic: c.msgtype for c in conns}
            # Messages left after a start offset are not counted (that would read the bag).
            self.count: Optional[int] = (sum(c.msgcount for c in conns) if start_offset <= 0
                                         else None)

    def messages(self) -> Iterator[ReplayMessage]:
        with ros_types.open_reader(self.path) as reader:
            conns = [c for c in reader.connections if c.topic in self.topics]
            start = reader.start_time + int(self.start_offset * 1e9)
            for conn, t, data in ros_types.read_messages(reader, conns, start=start):
                yield ReplayMessage(conn.topic, conn.msgtype, t, data)


class FrameSource:
    """
    Frames of an image folder or a video as one camera topic, ``fps`` frames per second.

    Stamps start at the wall-clock time of the first ``messages()`` call and keep counting across
    loops, so time never runs backwards. ``fmt`` 'jpeg'/'png' publishes sensor_msgs/CompressedImage
    on ``<topic>/compressed`` as image_transport does; image files already in that format go out
    as they are, without re-encoding. ``encoding`` other than 'auto' publishes raw frames as a
    camera driver would: yuv422 (UYVY), yuv422_yuy2 or bayer_*8. A png or jpeg file over
    ``max_pixels`` (width x height, read from its header) is refused before it is decoded or sent.
    """

    def __init__(self, path: Path, topic: str, fps: Optional[float], frame_id: str,
                 start_offset: float = 0.0, fmt: str = 'raw', encoding: str = 'auto',
                 max_pixels: int = image_codec.MAX_INPUT_PIXELS) -> None:
        if fmt not in FORMATS:
            raise ValueError(f'format {fmt!r} not in {FORMATS}')
        if encoding not in FRAME_ENCODINGS:
            raise ValueError(f'encoding {encoding!r} not in {FRAME_ENCODINGS}')
        if encoding != 'auto' and fmt != 'raw':
            raise ValueError(f'--encoding {encoding} needs --format raw, not {fmt}')
        self.path = Path(path)
        self.fmt = fmt
        self.encoding = encoding
        self.frame_id = frame_id
        self.max_pixels = max_pixels
        self.topic = topic if fmt == 'raw' else topic.rstrip('/') + '/compressed'
        self.msgtype = ros_types.IMAGE if fmt == 'raw' else ros_types.COMPRESSED_IMAGE
        self.topics = {self.topic: self.msgtype}
        if self.path.is_dir():
            self.files: Optional[List[Path]] = sorted(
                p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ValueError(f'{self.path}: no image files ({", ".join(IMAGE_SUFFIXES)})')
            self.fps = fps or 10.0
            total = len(self.files)
        else:
            self.files = None
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise ValueError(f'{self.path}: not a bag, image folder or video OpenCV can open')
            self.fps = fps or cap.get(cv2.CAP_PROP_FPS) or 10.0
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
        if self.fps <= 0:
            raise ValueError(f'--fps {self.fps} must be > 0')
        self.skip = int(round(start_offset * self.fps))
        self.count: Optional[int] = max(0, total - self.skip) if total > 0 else None
        self._index = 0  # frames published so far, over all loops
        self._t0: Optional[int] = None

    def _frames(self) -> Iterator[Tuple[str, Optional[bytes], Optional[np.ndarray]]]:
        """Yield (name, file bytes if already in the wanted format, decoded image)."""
        if self.files is not None:
            for path in self.files[self.skip:]:
                data = path.read_bytes()
                self._check_size(path, data)
                ext = path.suffix.lower()
                if (self.fmt == 'jpeg' and ext in ('.jpg', '.jpeg')) or (
                        self.fmt == 'png' and ext == '.png'):
                    yield path.name, data, None
                    continue
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                if image is None:
                    raise ValueError(f'{path}: cannot be decoded as an image')
                yield path.name, None, image
            return
        cap = cv2.VideoCapture(str(self.path))
        try:
            for _ in range(self.skip):
                if not cap.grab():
                    return
            index = self.skip
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                yield f'{self.path.name} frame {index}', None, image
                index += 1
        finally:
            cap.release()

    def _check_size(self, path: Path, data: bytes) -> None:
        codec = image_codec.sniff_format(data)
        if codec not in ('png', 'jpeg'):
            return  # OpenCV reads other formats' sizes itself
        try:
            width, height = image_codec.compressed_size(codec, data)
            image_codec.check_pixels(width, height, self.max_pixels, codec)
        except image_codec.ImageFormatError as e:
            raise ValueError(f'{path}: {e}') from None

    def messages(self) -> Iterator[ReplayMessage]:
        if self._t0 is None:
            self._t0 = time.time_ns()
        for name, data, image in self._frames():
            stamp = self._t0 + int(round(self._index * 1e9 / self.fps))
            header = ros_types.make_header(stamp, self.frame_id)
            if data is None:
                data = self._encode(name, image, header)
            else:
                data = ros_types.compressed_cdr(header, self.fmt, data)  # the file as it is
            self._index += 1
            yield ReplayMessage(self.topic, self.msgtype, stamp, data)

    def _encode(self, name: str, image: np.ndarray, header) -> bytes:
        if image.dtype != np.uint8:
            raise ValueError(f'{name}: {image.dtype} pixels; only 8-bit images are published')
        if image.ndim == 2:
            image = image[:, :, None]  # (H, W, 1)
        encoding = {1: 'mono8', 3: 'bgr8', 4: 'bgra8'}.get(image.shape[2])
        if encoding is None:
            raise ValueError(f'{name}: {image.shape[2]} channels (1, 3 or 4 expected)')
        if self.encoding != 'auto':
            image, encoding = self._convert(name, image, encoding), self.encoding
        if self.fmt == 'raw':
            return ros_types.image_cdr(header, image, encoding)
        ok, buf = cv2.imencode('.jpg' if self.fmt == 'jpeg' else '.png', image)
        if not ok:
            raise ValueError(f'{name}: OpenCV cannot encode it as {self.fmt}')
        return ros_types.compressed_cdr(header, f'{encoding}; {self.fmt} compressed {encoding}',
                                        buf.tobytes())

    def _convert(self, name: str, image: np.ndarray, encoding: str) -> np.ndarray:
        """(H, W, C) bgr8/bgra8/mono8 frame -> (H, W, 2 or 1) frame in ``self.encoding``."""
        from seg_perception import color_convert  # imports torch: only when asked for

        code = {'mono8': cv2.COLOR_GRAY2RGB, 'bgr8': cv2.COLOR_BGR2RGB,
                'bgra8': cv2.COLOR_BGRA2RGB}[encoding]
        rgb = cv2.cvtColor(image, code)  # (H, W, 3)
        try:
            return color_convert.from_rgb(rgb, self.encoding)
        except ValueError as e:
            raise ValueError(f'{name}: {e}') from e


def open_source(args: argparse.Namespace):
    """Open the BagSource or FrameSource that ``args.source`` names."""
    path = Path(args.source)
    if not path.exists():
        raise ValueError(f'{path}: no such bag, image folder or video file')
    if (path.is_dir() and (path / 'metadata.yaml').exists()) or path.suffix in BAG_SUFFIXES:
        if args.encoding != 'auto':
            raise ValueError(f'--encoding is for folders and videos; {path} is a bag, whose '
                             'frames go out as recorded')
        return BagSource(path, args.topics or (), args.start_offset)
    if len(args.topics or ()) > 1:
        raise ValueError('a folder or video is one camera: give at most one --topic')
    topic = (args.topics or ['/camera/image_raw'])[0]
    return FrameSource(path, topic, args.fps, args.frame_id, args.start_offset, args.format,
                       args.encoding, args.max_input_pixels)


def parse_topic_map(items: Sequence[str]) -> Dict[str, str]:
    """Turn ['/a:=/b', ...] into {'/a': '/b'}; an item without ':=' is an error."""
    mapping = {}
    for item in items:
        old, sep, new = item.partition(':=')
        if not sep or not old or not new:
            raise ValueError(f'--topic-map {item!r} is not OLD:=NEW')
        mapping[old] = new
    return mapping


def split_ros_args(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    Split the command line into this program's arguments and a ``--ros-args ... [--]`` section.

    rclpy's own stripping would take ``--topic-map a:=b`` for a (deprecated) remapping rule.
    """
    argv = list(argv)
    if '--ros-args' not in argv:
        return argv, []
    start = argv.index('--ros-args')
    end = argv.index('--', start) if '--' in argv[start:] else len(argv)
    return argv[:start] + argv[end + 1:], argv[start:end + 1]


def due_time(t_ns: int, first_ns: int, start_wall: float, rate: float) -> float:
    """Return the monotonic-clock time at which a message recorded at ``t_ns`` is due."""
    return start_wall + (t_ns - first_ns) / 1e9 / rate


class Replayer:
    """An rclpy node with one publisher per topic and /clock; publishes serialised messages."""

    def __init__(self, topics: Dict[str, str], qos: str = 'reliable', depth: int = 10,
                 clock: bool = True) -> None:
        self.node = Node('seg_replay')
        reliability = (ReliabilityPolicy.RELIABLE if qos == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        profile = QoSProfile(depth=depth, reliability=reliability)
        self.publishers = {}
        for topic, msgtype in topics.items():
            pkg, _, name = msgtype.split('/')
            cls = getattr(importlib.import_module(f'{pkg}.msg'), name)
            self.publishers[topic] = self.node.create_publisher(cls, topic, profile)
        self.clock_publisher = self.node.create_publisher(
            Clock, '/clock', QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        ) if clock else None

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Wait until every image topic has a subscriber (or ``timeout`` s pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                return True
            time.sleep(0.05)
        missing = [t for t, p in self.publishers.items() if p.get_subscription_count() == 0]
        _logger.warning('no subscriber after %.1f s on %s; publishing anyway', timeout,
                        ', '.join(missing))
        return False

    def publish_clock(self, t_ns: int) -> None:
        if self.clock_publisher is not None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(t_ns, 1_000_000_000)
            self.clock_publisher.publish(msg)

    def publish(self, topic: str, data: bytes) -> None:
        self.publishers[topic].publish(data)

    def flush(self, timeout: float = 2.0) -> None:
        """Give reliable subscribers time to acknowledge the last messages."""
        pubs = list(self.publishers.values())
        if self.clock_publisher is not None:
            pubs.append(self.clock_publisher)
        for pub in pubs:
            pub.wait_for_all_acked(Duration(seconds=timeout))

    def destroy(self) -> None:
        self.node.destroy_node()


def replay(source, replayer: Replayer, rate: float = 1.0, loop: bool = False,
           topic_map: Optional[Dict[str, str]] = None, clock_hz: float = 40.0,
           progress: bool = True) -> int:
    """Publish ``source`` at ``rate`` x recorded speed; returns the number of messages sent."""
    topic_map = topic_map or {}
    sent = 0
    period = 1.0 / clock_hz if clock_hz > 0 else float('inf')
    bar = tqdm(total=None if loop else source.count, unit='msg', desc='seg-replay',
               disable=not progress, dynamic_ncols=True)
    try:
        while True:
            first: Optional[int] = None
            start_wall = time.monotonic()
            for msg in source.messages():
                if first is None:
                    first = msg.time
                due = due_time(msg.time, first, start_wall, rate)
                while True:  # wait for the message's time, ticking /clock meanwhile
                    now = time.monotonic()
                    if now >= due:
                        break
                    replayer.publish_clock(first + int((now - start_wall) * rate * 1e9))
                    time.sleep(min(due - now, period))
                replayer.publish_clock(msg.time)
                replayer.publish(topic_map.get(msg.topic, msg.topic), msg.data)
                sent += 1
                bar.update(1)
            if not loop or first is None:
                return sent
    finally:
        bar.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='seg-replay', description='Publish a rosbag2\'s image topics, a folder of frames or '
        'a video as camera topics at recorded speed, with /clock for use_sim_time.')
    p.add_argument('source', help='rosbag2 (folder, .mcap or .db3), image folder or video file')
    p.add_argument('--topic', action='append', dest='topics', metavar='TOPIC',
                   help='bags: image topic to play (repeatable; default all image topics); '
                   'folders and videos: the topic to publish on (default /camera/image_raw)')
    p.add_argument('--topic-map', action='append', default=[], metavar='OLD:=NEW',
                   help='publish topic OLD as NEW (repeatable)')
    p.add_argument('--rate', type=float, default=1.0, help='speed factor (2 = twice as fast)')
    p.add_argument('--loop', action='store_true', help='start again at the end, until Ctrl-C')
    p.add_argument('--start-offset', type=float, default=0.0, metavar='SEC',
                   help='skip the first SEC seconds')
    p.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable',
                   help='reliability of the image publishers')
    p.add_argument('--depth', type=int, default=10, help='history depth of the image publishers')
    p.add_argument('--fps', type=float, default=None,
                   help="folders and videos: frames per second (default: the video's, or 10)")
    p.add_argument('--frame-id', default='camera', help='folders and videos: header frame_id')
    p.add_argument('--format', choices=FORMATS, default='raw',
                   help='folders and videos: sensor_msgs/Image (raw) or CompressedImage on '
                   '<topic>/compressed (jpeg, png)')
    p.add_argument('--encoding', choices=FRAME_ENCODINGS, default='auto',
                   help='folders and videos with --format raw: publish as the files hold them '
                   '(auto: bgr8, bgra8, mono8) or as a camera driver does (even sizes needed)')
    p.add_argument('--clock-hz', type=float, default=40.0,
                   help='/clock ticks per second between messages (0: only with messages)')
    p.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    p.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='SEC',
                   help='before playing, wait up to SEC s for a subscriber on every topic '
                   '(a best-effort subscriber can still miss the first message: add --delay)')
    p.add_argument('--delay', type=float, default=0.0, metavar='SEC',
                   help='sleep SEC s before playing, after --wait-for-subscribers (as ros2 bag '
                   'play --delay): other subscribers match meanwhile')
    p.add_argument('--max-input-pixels', type=int, default=image_codec.MAX_INPUT_PIXELS,
                   metavar='N', help='image folders: refuse png/jpeg files over N pixels '
                   '(width x height, from their header)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--log-level', default='INFO', help='logging level')
    return p


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt_on_signals() -> Dict[int, object]:
    """Make the first SIGINT or SIGTERM raise KeyboardInterrupt; return the handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; the caller keeps its own

    def interrupt(signum: int, frame: object) -> None:
        for sig in STOP_SIGNALS:  # later signals change nothing while the replay winds down
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt)
    return previous


def _restore_signals(previous: Dict[int, object]) -> None:
    """Put back the handlers ``_interrupt_on_signals`` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, ros_args = split_ros_args(argv)
    args = build_parser().parse_args(own)
    logging.basicConfig(level=args.log_level.upper(), format='%(levelname)s %(name)s: %(message)s')
    if args.rate <= 0:
        print(f'seg-replay: error: --rate {args.rate} must be > 0', file=sys.stderr)
        return 2
    try:
        topic_map = parse_topic_map(args.topic_map)
        source = open_source(args)
    except (BagError, ValueError, OSError) as e:
        print(f'seg-replay: error: {e}', file=sys.stderr)
        return 1
    published = {topic_map.get(t, t): m for t, m in source.topics.items()}
    # Signals are this function's, not rclpy's: rclpy's handler shuts the context down at once,
    # so a publish already under way failed with "context is invalid" before the interrupt
    # arrived. Here Ctrl-C or SIGTERM raises KeyboardInterrupt between two publishes instead.
    rclpy.init(args=['seg-replay'] + ros_args, signal_handler_options=SignalHandlerOptions.NO)
    previous = _interrupt_on_signals()
    replayer = None
    t0 = time.monotonic()
    sent = 0
    try:
        replayer = Replayer(published, args.qos, args.depth, clock=not args.no_clock)
        _logger.info('publishing %s', ', '.join(f'{t} ({m.rsplit("/", 1)[-1]})'
                                                for t, m in published.items()))
        if args.wait_for_subscribers > 0:
            replayer.wait_for_subscribers(args.wait_for_subscribers)
        time.sleep(max(0.0, args.delay))
        sent = replay(source, replayer, args.rate, args.loop, topic_map,
                      0.0 if args.no_clock else args.clock_hz, progress=not args.no_progress)
        replayer.flush()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (BagError, ValueError, OSError) as e:
        print(f'seg-replay: error: {e}', file=sys.stderr)
        return 1
    finally:
        if replayer is not None:
            replayer.destroy()
        rclpy.try_shutdown()
        _restore_signals(previous)
    print(f'seg-replay: published {sent} messages on {len(published)} topics in '
          f'{time.monotonic() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
