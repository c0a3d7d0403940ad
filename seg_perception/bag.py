"""
seg-bag: segment the camera topics of a recorded rosbag2 offline, into a new bag.

For each input topic ``<ns>/image_raw`` (or ``<ns>/<name>``, or image_transport's
``<ns>/<name>/compressed``) the output bag holds ``<ns>/segmentation/labels`` (mono8 class index),
``.../color`` (rgb8), ``.../overlay`` (the input's channel order) and, if asked,
``.../confidence``: one message per input frame, with the input's header and bag time. Frames run
through the node's own :class:`SegmentationPipeline` in batches.

The output is written under a hidden ``.<name>.incomplete-*`` folder next to it and renamed into
place only when complete, so a bag at the output path is always a finished one.
"""

import argparse
from dataclasses import dataclass, field
import json
import logging
import os
from pathlib import Path
import re
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rosbags.interfaces import (Connection, Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from tqdm import tqdm

from seg_perception import ros_types
from seg_perception.engines import ACCELERATIONS
from seg_perception.image_codec import ImageFormatError, MAX_INPUT_PIXELS
from seg_perception.pipeline import class_table_json, Frame, Outputs, SegmentationPipeline
from seg_perception.postprocess import LABEL_UPSAMPLING
from seg_perception.ros_types import BagError, format_time
from seg_training.base.cli import (HelpFormatter, sigterm_as_interrupt, Terminated,
                                   unit_interval_arg)
from seg_training.base.files import atomic_path, check_writable, remove_leftovers
from seg_training.base.yaml_reader import ConfigError, read_yaml_file
from seg_training.nets.options import network_size_arg

_logger = logging.getLogger(__name__)

OUTPUT_NAMES = ('labels', 'color', 'overlay', 'confidence')
CONFIDENCE_ENCODINGS = ('mono8', '32FC1')
CUSTOM_DATA_CLASSES = 'seg_perception.class_table'
# Offered QoS of the class-table topic, as the node's: played back, late subscribers get it too.
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                  QosTime(0, 0), QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


@dataclass
class BagStats:
    """What a run did: frame counts per input topic and the speed against the recording."""

    frames: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0       # wall time of the decode-segment-write loop
    bag_seconds: float = 0.0   # recorded time from the first to the last frame read

    @property
    def total(self) -> int:
        return sum(self.frames.values())

    @property
    def fps(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    @property
    def bag_fps(self) -> float:
        """Frames per second of the recording (all selected topics together)."""
        return (self.total - 1) / self.bag_seconds if self.bag_seconds > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        return self.bag_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {'frames': dict(self.frames), 'total_frames': self.total,
                'seconds': round(self.seconds, 3), 'fps': round(self.fps, 2),
                'bag_seconds': round(self.bag_seconds, 3), 'bag_fps': round(self.bag_fps, 2),
                'realtime_factor': round(self.realtime_factor, 3)}


def output_namespaces(connections: Sequence[Connection]) -> Dict[str, str]:
    """Input topic -> output namespace; two input topics of one namespace are an error."""
    seen: Dict[str, str] = {}
    result = {}
    for conn in connections:
        ns = ros_types.camera_namespace(conn.topic, conn.msgtype)
        other = seen.setdefault(ns, conn.topic)
        if other != conn.topic:
            raise BagError(f'topics {other} and {conn.topic} would both write '
                           f'{ns}/segmentation/*; process them in separate runs')
        result[conn.topic] = ns
    return result


def check_topics_have_messages(reader: Any, topics: Sequence[str],
                               frames: Optional[Dict[str, int]] = None) -> None:
    """
    Raise BagError naming each of ``topics`` without messages and the topics that have some.

    Counts come from the bag's index (``frames``, if given: the frames actually read).
    """
    counts: Dict[str, int] = {}
    types: Dict[str, str] = {}
    for c in reader.connections:
        counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        types[c.topic] = c.msgtype.rsplit('/', 1)[-1]
    found = frames if frames is not None else counts
    empty = [t for t in topics if not found.get(t)]
    if not empty:
        return
    listed = ', '.join(f'{t} ({types[t]}, {n})' for t, n in sorted(counts.items()) if n)
    raise BagError(f'{reader.path}: no messages on {", ".join(empty)}; topics with messages: '
                   f'{listed or "none"}')


def parse_outputs(text: str) -> Outputs:
    """'labels,color' -> Outputs(labels=True, color=True, ...); labels are always written."""
    names = {n.strip() for n in text.split(',') if n.strip()}
    unknown = names - set(OUTPUT_NAMES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f'unknown outputs {sorted(unknown)} (choose from {",".join(OUTPUT_NAMES)})')
    return Outputs(labels=True, color='color' in names, overlay='overlay' in names,
                   confidence='confidence' in names)


def input_bag_paths(input_path: Path) -> List[Path]:
    """
    Return the input bag resolved (links followed), and the rosbag2 folder it lies in.

    A storage file given as ``--input`` (``drive/drive_0.mcap``) belongs to its folder when that
    holds the bag's metadata.yaml.
    """
    path = Path(input_path).resolve()
    paths = [path]
    if path.is_file() and (path.parent / 'metadata.yaml').is_file():
        paths.append(path.parent)
    return paths


def check_output(input_path: Path, output_path: Path, overwrite: bool) -> Optional[str]:
    """
    Refuse an output that would touch the input; return what ``--overwrite`` replaces, if any.

    The output may not be, contain or lie inside the input bag (links followed). An existing
    output is replaced only with ``overwrite`` and only if it is a bag this command could have
    written (see :func:`describe_bag`). BagError names the path.
    """
    out = Path(output_path)
    resolved = out.resolve()
    for bag in input_bag_paths(input_path):
        if resolved == bag:
            raise BagError(f'{out}: output is the input bag')
        if bag.is_relative_to(resolved):
            raise BagError(f'{out}: output contains the input bag {input_path}')
        if resolved.is_relative_to(bag):
            raise BagError(f'{out}: output lies inside the input bag {input_path}')
    if not out.exists():
        return None
    if not overwrite:
        raise BagError(f'{out}: output exists (use --overwrite to replace it)')
    return describe_bag(out)


# Files of a rosbag2 folder besides metadata.yaml: storage files (compressed too), SQLite's own.
_BAG_FILE = re.compile(r'.+\.(mcap|db3)(\.zstd)?|.+\.db3-(shm|wal|journal)')
_BAG_MAGIC = (b'\x89MCAP', b'SQLite format 3\x00')


def describe_bag(path: Path) -> str:
    """
    Describe the bag at ``path`` that ``--overwrite`` may replace; BagError if it is none.

    A bag is a rosbag2 folder (metadata.yaml of rosbag2 and storage files, nothing else) or a
    single mcap or sqlite3 file: never a folder of bags or of other files.
    """
    not_bag = f'{path}: not a bag that seg-bag writes, so --overwrite leaves it alone'
    if path.is_file():
        with open(path, 'rb') as f:
            head = f.read(16)
        if not head.startswith(_BAG_MAGIC):
            raise BagError(f'{not_bag} (neither an mcap nor a sqlite3 file)')
        return f'the bag file {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)'
    if not path.is_dir():
        raise BagError(f'{not_bag} (neither a file nor a folder)')
    try:
        meta = read_yaml_file(path / 'metadata.yaml', 'bag metadata')
    except ConfigError as e:
        raise BagError(f'{not_bag}: {e}') from None
    if not isinstance(meta, dict) or 'rosbag2_bagfile_information' not in meta:
        raise BagError(f'{not_bag} ({path / "metadata.yaml"} is not rosbag2 metadata)')
    files = [p for p in path.iterdir() if p.name != 'metadata.yaml']
    foreign = [p for p in files
               if p.is_symlink() or not p.is_file() or not _BAG_FILE.fullmatch(p.name)]
    if foreign:
        raise BagError(f'{not_bag} (it holds {foreign[0].name}, no file of a rosbag2 bag)')
    size = sum(p.stat().st_size for p in [path / 'metadata.yaml', *files])
    return f'the rosbag2 bag {path} ({size / 2 ** 20:.1f} MiB in {len(files) + 1} files)'


def incomplete_pattern(path: Path) -> 're.Pattern[str]':
    """Names of the temporary folders :class:`AtomicBagWriter` makes for ``path``."""
    return re.compile(re.escape(f'.{path.name}.incomplete-') + r'[a-z0-9_]{8}')


class AtomicBagWriter:
    """
    A rosbags Writer on a hidden temporary path, renamed to ``path`` on success only.

    On an error (or Ctrl-C) the temporary bag is deleted; a killed process leaves only a folder
    named ``.<name>.incomplete-*`` without metadata.yaml, which no tool takes for a finished bag,
    and the next successful run on ``path`` removes it.
    """

    def __init__(self, path: Path, storage: str, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.storage = storage
        self.overwrite = overwrite
        self._tmpdir: Optional[Path] = None
        self._started = 0.0  # time.time() at __enter__
        self.writer: Optional[Writer] = None

    def __enter__(self) -> Writer:
        if self.path.exists() and not self.overwrite:
            raise BagError(f'{self.path}: output exists (use --overwrite to replace it)')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f'.{self.path.name}.incomplete-',
                                             dir=self.path.parent))
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        self.writer = Writer(self._tmpdir / self.path.name, version=Writer.VERSION_LATEST,
                             storage_plugin=plugin)
        self.writer.open()
        return self.writer

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._tmpdir is not None and self.writer is not None
        try:
            if exc_type is None:
                self.writer.close()
                if self.path.exists():  # --overwrite: move the old bag aside first
                    os.replace(self.path, self._tmpdir / 'replaced')
                    _logger.info('%s: replaced the bag that was there', self.path)
                os.replace(self._tmpdir / self.path.name, self.path)
            else:
                self.writer.abort()
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if exc_type is None:  # what killed runs on this output left
            remove_leftovers(self.path.parent, incomplete_pattern(self.path), self._started)
        return False


class BagSegmenter:
    """Reads image topics of one bag, segments them in batches, writes the output bag."""

    def __init__(self, pipeline: SegmentationPipeline, outputs: Outputs, batch_size: int = 4,
                 alpha: float = 0.5, confidence_encoding: str = 'mono8',
                 include_inputs: bool = False, model_name: str = '',
                 max_input_pixels: int = MAX_INPUT_PIXELS) -> None:
        if batch_size < 1:
            raise ValueError(f'batch size {batch_size} < 1')
        if confidence_encoding not in CONFIDENCE_ENCODINGS:
            raise ValueError(f'confidence encoding {confidence_encoding!r} not in '
                             f'{CONFIDENCE_ENCODINGS}')
        self.pipeline = pipeline
        self.outputs = outputs
        self.batch_size = batch_size
        self.alpha = alpha
        self.confidence_encoding = confidence_encoding
        self.include_inputs = include_inputs
        self.max_input_pixels = max_input_pixels
        self.class_table = class_table_json(pipeline.info.classes, model_name)

    def run(self, input_path: Path, output_path: Path, topics: Sequence[str],
            storage: Optional[str] = None, overwrite: bool = False,
            progress: bool = True) -> BagStats:
        """Segment ``topics`` of ``input_path`` into ``output_path``; returns the statistics."""
        check_output(input_path, output_path, overwrite)
        with ros_types.open_reader(input_path) as reader:
            connections = ros_types.select_connections(reader, topics)
            namespaces = output_namespaces(connections)
            storage = storage or ros_types.storage_format(reader)
            total = sum(c.msgcount for c in connections)
            stats = BagStats(frames={t: 0 for t in topics})
            with AtomicBagWriter(output_path, storage, overwrite) as writer:
                writer.set_custom_data(CUSTOM_DATA_CLASSES, self.class_table)
                out = self._add_connections(writer, connections, namespaces)
                bar = tqdm(total=total, unit='frame', desc='seg-bag', disable=not progress,
                           dynamic_ncols=True)
                t0 = time.perf_counter()
                first = last = None
                batch: List[Tuple[Connection, int, ros_types.BagImage]] = []
                try:
                    for conn, t, data in ros_types.read_messages(reader, connections):
                        first = t if first is None else first
                        last = t
                        batch.append((conn, t, self._decode(conn, t, data)))
                        if self.include_inputs:
                            writer.write(out[(conn.topic, 'input')], t, data)
                        if len(batch) == self.batch_size:
                            self._flush(batch, writer, out, stats)
                            bar.update(len(batch))
                            batch = []
                    self._flush(batch, writer, out, stats)
                    bar.update(len(batch))
                finally:
                    bar.close()
                stats.seconds = time.perf_counter() - t0
                stats.bag_seconds = (last - first) / 1e9 if first is not None else 0.0
                check_topics_have_messages(reader, topics, stats.frames)  # before the rename
        return stats

    def _add_connections(self, writer: Writer, connections: Sequence[Connection],
                         namespaces: Dict[str, str]) -> Dict[Tuple[str, str], Connection]:
        ts = ros_types.typestore()
        wanted = [n for n in OUTPUT_NAMES if getattr(self.outputs, n)]
        out = {}
        for conn in connections:
            if (conn.topic, 'class_table') in out:  # a topic stored as several connections
                continue
            qos = list(getattr(conn.ext, 'offered_qos_profiles', []) or [])
            if self.include_inputs:
                out[(conn.topic, 'input')] = writer.add_connection(
                    conn.topic, conn.msgtype, typestore=ts, offered_qos_profiles=qos)
            for name in wanted:
                topic = f'{namespaces[conn.topic]}/segmentation/{name}'
                out[(conn.topic, name)] = writer.add_connection(
                    topic, ros_types.IMAGE, typestore=ts, offered_qos_profiles=qos)
            out[(conn.topic, 'class_table')] = writer.add_connection(
                f'{namespaces[conn.topic]}/segmentation/class_table', ros_types.STRING,
                typestore=ts, offered_qos_profiles=[LATCHED_QOS])
        return out

    def _decode(self, conn: Connection, t: int, data: bytes) -> ros_types.BagImage:
        try:
            return ros_types.decode_image(data, conn.msgtype, self.max_input_pixels)
        except ImageFormatError as e:
            raise BagError(f'{conn.topic} at {format_time(t)}: image cannot be segmented: '
                           f'{e}') from e

    def _flush(self, batch: Sequence[Tuple[Connection, int, ros_types.BagImage]],
               writer: Writer, out: Dict[Tuple[str, str], Connection], stats: BagStats) -> None:
        if not batch:
            return
        frames = [Frame(image=img.image, encoding=img.encoding) for _, _, img in batch]
        try:
            results = self.pipeline(frames, self.outputs, self.alpha)
        except (ValueError, RuntimeError) as e:
            conn, t, _ = batch[0]
            raise BagError(f'{conn.topic} at {format_time(t)} (batch of {len(batch)} ending '
                           f'{batch[-1][0].topic} at {format_time(batch[-1][1])}): '
                           f'segmentation failed: {e}') from e
        for (conn, t, img), res in zip(batch, results):
            if stats.frames[conn.topic] == 0:  # the class table, once, with the first frame
                writer.write(out[(conn.topic, 'class_table')], t,
                             ros_types.string_cdr(self.class_table))
            images = {'labels': (res.labels, 'mono8'), 'color': (res.color, 'rgb8'),
                      'overlay': (res.overlay, res.overlay_encoding),
                      'confidence': (self._confidence(res.confidence), self.confidence_encoding)}
            for name, (array, encoding) in images.items():
                if array is not None:
                    writer.write(out[(conn.topic, name)], t,
                                 ros_types.image_cdr(img.header, array, encoding))
            stats.frames[conn.topic] += 1

    def _confidence(self, conf: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """Max softmax probability as mono8 (x 255, rounded) or 32FC1."""
        if conf is None:
            return None
        if self.confidence_encoding == '32FC1':
            return conf.astype(np.float32)
        return np.rint(conf * 255.0).astype(np.uint8)  # (H, W)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog='seg-bag', description='Segment image topics of a rosbag2 (mcap or sqlite3) into a '
        'new bag with <ns>/segmentation/{labels,color,overlay,confidence}.')
    p.add_argument('--model', required=True, help='model file (.pt)')
    p.add_argument('--topic', action='append', required=True, dest='topics', metavar='TOPIC',
                   help='sensor_msgs/Image or CompressedImage topic to segment (repeatable)')
    p.add_argument('--input', required=True, type=Path, help='input bag (folder, .mcap or .db3)')
    p.add_argument('--output', required=True, type=Path, help='output bag folder')
    p.add_argument('--batch-size', type=int, default=4, help='frames per forward pass')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--precision', default='fp32', choices=('fp32', 'fp16', 'bf16'),
                   help='network precision (fp16/bf16: CUDA)')
    p.add_argument('--accelerate', default='auto', choices=ACCELERATIONS,
                   help='how the network runs; auto: the fastest engine for the device and '
                   'precision (docs/performance.md, Engines)')
    p.add_argument('--input-size', type=network_size_arg, default=None, metavar='WxH',
                   help="network input size (default: the model's own)")
    p.add_argument('--alpha', type=unit_interval_arg, default=0.5,
                   help='overlay opacity of the class colours, 0..1')
    p.add_argument('--label-upsampling', default='auto', choices=LABEL_UPSAMPLING,
                   help='labels at camera size, as the node (default auto: bilinear on CUDA, '
                   'bilinear_x2 on the CPU)')
    p.add_argument('--outputs', type=parse_outputs, default=parse_outputs('color,overlay'),
                   help='comma list of labels,color,overlay,confidence (labels always written; '
                   'default labels,color,overlay)')
    p.add_argument('--confidence-encoding', choices=CONFIDENCE_ENCODINGS, default='mono8',
                   help='mono8 = max softmax probability x 255; 32FC1 = the probability')
    p.add_argument('--include-inputs', action='store_true',
                   help='copy the input topics into the output bag')
    p.add_argument('--storage', choices=ros_types.STORAGE_FORMATS, default=None,
                   help="output storage (default: the input's)")
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing output bag (only a bag: a rosbag2 folder or an '
                   'mcap/sqlite3 file)')
    p.add_argument('--max-input-pixels', type=int, default=MAX_INPUT_PIXELS, metavar='N',
                   help='refuse frames over N pixels (width x height; compressed ones from '
                   'their header, before decoding)')
    p.add_argument('--stats-json', type=Path, default=None,
                   help='also write the run statistics to this JSON file')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--log-level', default='WARNING', help='logging level (e.g. INFO)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(levelname)s %(name)s: %(message)s')
    if args.batch_size < 1:
        print(f'seg-bag: error: --batch-size {args.batch_size} must be >= 1', file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            stats, pipeline = _segment(args)
    except (BagError, ValueError, RuntimeError, OSError, WriterError) as e:
        print(f'seg-bag: error: {e}', file=sys.stderr)
        return 1
    except Terminated as e:
        print(f'seg-bag: terminated ({signal.Signals(e.signum).name}); no output bag written',
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print('seg-bag: interrupted; no output bag written', file=sys.stderr)
        return 130
    per_topic = ', '.join(f'{t}: {n}' for t, n in stats.frames.items())
    print(f'seg-bag: {stats.total} frames ({per_topic}) in {stats.seconds:.1f} s = '
          f'{stats.fps:.1f} frames/s on {pipeline.device} ({pipeline.engine.describe()}); '
          f'the bag records {stats.bag_fps:.1f} frames/s over {stats.bag_seconds:.1f} s -> '
          f'{stats.realtime_factor:.2f}x real time; wrote {args.output}')
    if args.stats_json:
        try:
            with atomic_path(args.stats_json) as tmp:
                tmp.write_text(json.dumps(
                    dict(stats.to_dict(), device=str(pipeline.device),
                         batch_size=args.batch_size, input=str(args.input),
                         output=str(args.output)), indent=2) + '\n')
        except OSError as e:
            print(f'seg-bag: error: --stats-json {args.stats_json}: {e} (the bag {args.output} '
                  'is complete)', file=sys.stderr)
            return 1
    return 0


def _segment(args: argparse.Namespace) -> Tuple[BagStats, SegmentationPipeline]:
    """Check every path, then segment the bag as ``args`` say (main's work)."""
    replaced = check_output(args.input, args.output, args.overwrite)
    if args.stats_json:
        check_writable(args.stats_json)
    with ros_types.open_reader(args.input) as reader:  # fail fast, before loading the model
        ros_types.select_connections(reader, args.topics)
        check_topics_have_messages(reader, args.topics)
    if replaced:
        _logger.warning('--overwrite: %s will be replaced once the new bag is complete',
                        replaced)
    pipeline = SegmentationPipeline.from_file(
        str(args.model), device=args.device, precision=args.precision,
        input_size=args.input_size, accelerate=args.accelerate,
        label_upsampling=args.label_upsampling)
    segmenter = BagSegmenter(pipeline, args.outputs, args.batch_size, args.alpha,
                             args.confidence_encoding, args.include_inputs, str(args.model),
                             args.max_input_pixels)
    stats = segmenter.run(args.input, args.output, args.topics, args.storage,
                          args.overwrite, progress=not args.no_progress)
    return stats, pipeline


if __name__ == '__main__':
    sys.exit(main())
