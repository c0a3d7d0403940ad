"""
Int8 calibration: activation ranges measured on real frames, stored in the model file.

The ``onnxruntime_int8`` engine (seg_perception.engines) quantizes the model at start-up from the
model file alone: weights per output channel (int8, symmetric), activations per tensor (uint8)
with the ranges recorded here, in onnxruntime's QDQ format. ``seg-export --model M --calibrate
FRAMES`` measures the ranges and writes a copy of the model file with a ``calibration`` entry::

    calibration = {
        'version': 1,
        'method': 'minmax' | 'percentile',   # how the ranges were taken from the frames
        'opset': int,                        # ONNX opset of the export the ranges belong to
        'exporter': str,                     # the exporter and its settings
        'graph_sha256': str,                 # fingerprint of that export's graph (no names)
        'op_types': [str],                   # ONNX op types quantized (the convolutions)
        'state_sha256': str,                 # the weights the ranges were measured with
        'input_size': [w, h],                # network size of the calibration frames
        'ranges': {key: [low, high]},        # per activation tensor, keyed by graph position
        'frames': {'source': str, 'calibration': int, 'held_out': int},
        'agreement': float,                  # int8 vs fp32 labels on the held-out frames
        'speedup': float,                    # fp32 / int8 median time on those frames
        'torch_version': str, 'onnxruntime_version': str,
    }

Tensors are keyed by their place in the graph (``n<node>.<output>`` in the exporter's node
order, ``in<i>`` for graph inputs), not by the names the exporter gives them, and the graph's
fingerprint hashes only op types and wiring (no names, no constant values). A fresh in-memory
export of the same model finds its ranges by position; one whose graph differs (another torch
exporter, another opset) or whose weights differ is refused with the command that recalibrates.

``agreement`` is the share of pixels whose int8 label equals the fp32 label on frames held out
from the range measurement (every fourth frame, when there are four or more), ``speedup`` the
fp32 / int8 median time on them, measured side by side; the engine's ``auto`` setting runs int8
only where they are at least :data:`MIN_AGREEMENT` and :data:`MIN_SPEEDUP`.
"""

import hashlib
import logging
import math
import os
from pathlib import Path
import re
import tempfile
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from seg_training.nets.provenance_record import _check_fields, _COUNT, _NUMBER, _TEXT

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
VERSION = 1
METHODS = ('minmax', 'percentile')
PERCENTILE = 99.999  # of the absolute activation values, for method 'percentile'
MIN_AGREEMENT = 0.98  # int8 vs fp32 label agreement at which 'auto' runs int8
MIN_SPEEDUP = 1.2     # and fp32 / int8 time (ESPNetv2 measured 0.94-1.07: not worth a label)
HOLD_OUT_EVERY = 4    # every fourth frame measures the agreement instead of the ranges
MAX_RANGES = 100_000  # activation tensors one record may list
# Op types quantized: the convolutions (the time); the rest (adds, concatenations, pooling,
# resizes, PReLU) stays fp32 between them, and so do the nodes that make the logits. Measured on
# ERFNet at 512x256: all op types 96.5 % label agreement, the convolutions alone 98.2 %.
CONV_OPS = ('Conv', 'ConvTranspose')
ACTIVATION_INPUT = 'image'
_HEX64 = ('64 hex digits', lambda v: isinstance(v, str) and re.fullmatch('[0-9a-f]{64}', v))
_SHARE = ('a number in [0, 1]', lambda v: _NUMBER[1](v) and 0.0 <= v <= 1.0)
_KEY = re.compile(r'in\d+|n\d+\.\d+')
# field -> (what it must be, test); all required
FIELDS = {'version': _COUNT, 'method': ('one of ' + ', '.join(METHODS), lambda v: v in METHODS),
          'opset': _COUNT, 'exporter': _TEXT, 'graph_sha256': _HEX64, 'state_sha256': _HEX64,
          'input_size': ('[width, height]', lambda v: isinstance(v, (list, tuple))
                         and len(v) == 2 and all(_COUNT[1](x) and x > 0 for x in v)),
          'ranges': ('a mapping', lambda v: isinstance(v, Mapping)),
          'frames': ('a mapping', lambda v: isinstance(v, Mapping)),
          'agreement': _SHARE, 'speedup': ('a number > 0', lambda v: _NUMBER[1](v) and v > 0),
          'torch_version': _TEXT, 'onnxruntime_version': _TEXT,
          'op_types': ('a list of ONNX op types', lambda v: isinstance(v, (list, tuple))
                       and bool(v) and all(isinstance(t, str) for t in v))}
FRAME_FIELDS = {'source': _TEXT, 'calibration': _COUNT, 'held_out': _COUNT}


class CalibrationError(ValueError):
    """Calibration that cannot be made or used; the message says why and how to redo it."""


def recalibrate_hint(model: str = 'MODEL', size: Optional[Tuple[int, int]] = None) -> str:
    """Return the command that adds (or renews) the calibration of a model file."""
    at = f' --size {size[0]}x{size[1]}' if size else ''
    return f'seg-export --model {model} --calibrate FRAMES_DIR{at} --output {model}'


def check_calibration(record: Any, where: str = 'calibration') -> None:
    """Raise ValueError naming the first field of ``record`` that is missing or mistyped."""
    if not isinstance(record, Mapping):
        raise ValueError(f'{where} is {type(record).__name__}, not a mapping')
    for name in list(FIELDS) + [f'frames.{k}' for k in FRAME_FIELDS]:
        parent, _, leaf = name.rpartition('.')
        holder = record.get(parent) if parent else record
        if isinstance(holder, Mapping) and holder.get(leaf) is None:
            raise ValueError(f'{where}.{name} is missing')
    _check_fields(record, FIELDS, where)
    _check_fields(record['frames'], FRAME_FIELDS, f'{where}.frames')
    if record['version'] > VERSION:
        raise ValueError(f'{where}.version {record["version"]} is newer than this software '
                         f'reads ({VERSION})')
    ranges = record['ranges']
    if len(ranges) > MAX_RANGES:
        raise ValueError(f'{where}.ranges lists {len(ranges)} tensors, more than {MAX_RANGES}')
    for key, pair in ranges.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f'{where}.ranges has key {str(key)[:40]!r}, not in<i> or n<i>.<j>')
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(_NUMBER[1](v) for v in pair) and pair[0] <= pair[1]):
            raise ValueError(f'{where}.ranges[{key!r}] is not [low, high] with finite '
                             'low <= high')


def within_bound(record: Optional[Mapping]) -> bool:
    """
    Tell whether int8 is worth running by ``record``'s measurements.

    Its labels agreed with fp32 on at least MIN_AGREEMENT of the pixels, and it ran at least
    MIN_SPEEDUP times as fast.
    """
    return (record is not None and record.get('agreement', 0.0) >= MIN_AGREEMENT
            and record.get('speedup', 0.0) >= MIN_SPEEDUP)


def graph_keys(graph: Any) -> Tuple[str, Dict[str, str]]:
    """
    Return (fingerprint, {tensor name: position key}) of an ONNX graph.

    The fingerprint hashes each node's domain, op type, output count and where its inputs come
    from (a graph input, an earlier node's output, or a weight of a given shape), in node order:
    the same network exported again hashes the same whatever names its tensors get.
    """
    keys = {inp.name: f'in{i}' for i, inp in enumerate(graph.input)}
    weights = {t.name: 'w' + 'x'.join(str(d) for d in t.dims) for t in graph.initializer}
    h = hashlib.sha256()
    for i, node in enumerate(graph.node):
        sources = [keys.get(n) or weights.get(n) or ('-' if n == '' else '?') for n in node.input]
        h.update(f'{node.domain}:{node.op_type}({",".join(sources)})'
                 f'->{len(node.output)};'.encode())
        for j, out in enumerate(node.output):
            keys[out] = f'n{i}.{j}'
    return h.hexdigest(), keys


def _ort_modules() -> Any:
    import onnxruntime
    from onnxruntime.quantization import calibrate, qdq_quantizer, quant_utils, QuantType

    return onnxruntime, calibrate, qdq_quantizer, quant_utils, QuantType


def quantize(fp32_onnx: bytes, record: Mapping, source: str = 'MODEL',
             size: Optional[Tuple[int, int]] = None) -> bytes:
    """
    Return the int8 QDQ model of an fp32 ONNX export (at ``size`` W, H), with ``record``'s ranges.

    Raises CalibrationError (naming ``source`` and the command that recalibrates) when the
    export is not the graph the ranges were measured on. ERFNet's graph is the same at every
    size; ESPNetv2's adaptive pooling makes it differ between sizes.
    """
    import onnx

    _, calibrate, qdq_quantizer, quant_utils, QuantType = _ort_modules()
    model = onnx.load_from_string(fp32_onnx)
    fingerprint, keys = graph_keys(model.graph)
    if fingerprint != record['graph_sha256']:
        w, h = record['input_size']
        at = f' at {size[0]}x{size[1]}' if size else ''
        raise CalibrationError(
            f'{source}: its int8 calibration was made for another ONNX graph than this '
            f'export{at} (calibrated at {w}x{h} with {record["exporter"]}, opset '
            f'{record["opset"]}, torch {record["torch_version"]}); recalibrate with: '
            f'{recalibrate_hint(source, size)}')
    names = {key: name for name, key in keys.items()}
    missing = sorted(k for k in record['ranges'] if k not in names)
    if missing:
        raise CalibrationError(f'{source}: int8 calibration ranges for tensors the graph lacks '
                               f'({missing[:3]}); recalibrate with: {recalibrate_hint(source)}')
    tensors = {names[k]: calibrate.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
               for k, (lo, hi) in record['ranges'].items()}
    model = quant_utils.save_and_reload_model_with_shape_infer(model)
    root = logging.getLogger()
    root.addFilter(_quiet)  # the quantizer warns on root for every 1-D per-channel weight
    try:
        quantizer = qdq_quantizer.QDQQuantizer(
            model, per_channel=True, reduce_range=False, weight_qType=QuantType.QInt8,
            activation_qType=QuantType.QUInt8,
            tensors_range=calibrate.TensorsData(calibrate.CalibrationMethod.MinMax, tensors),
            nodes_to_quantize=[], nodes_to_exclude=fp32_nodes(model.graph),
            op_types_to_quantize=list(record['op_types']),
            extra_options={})
        quantizer.quantize_model()
    finally:
        root.removeFilter(_quiet)
    return quantizer.model.model.SerializeToString()


def fp32_nodes(graph: Any) -> List[str]:
    """
    Name the nodes that stay fp32 whatever the op types quantized.

    The nodes that make the graph's outputs (the logits keep their order) and the grouped
    (depthwise) convolutions: onnxruntime's int8 grouped convolution was slower than fp32 on
    the CPU measured and cost accuracy (ESPNetv2 CamVid at 480x352, 4 held-out frames: all
    convolutions int8 96.9 % label agreement and 1.14x slower than fp32; dense ones only
    99.0 %).
    """
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if outputs & set(n.output)
            or (n.op_type == 'Conv' and any(a.name == 'group' and a.i > 1
                                            for a in n.attribute))]


def _quiet(record: logging.LogRecord) -> bool:
    """Drop onnxruntime's per-weight notices (1-D weights without axis 1, bias scales)."""
    text = record.getMessage()
    return 'is out-of-range for weight' not in text and 'has a valid scale' not in text


def _op_types() -> List[str]:
    """Op types quantize_static quantizes by default (QDQ and QOperator registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def measure_ranges(fp32_onnx: bytes, frames: Iterable[np.ndarray], method: str = 'minmax',
                   op_types: Sequence[str] = ()) -> Dict[str, List[float]]:
    """
    Return {position key: [low, high]} of every activation to quantize over ``frames``.

    ``frames`` are network inputs (1, 3, h, w) float32. Method 'minmax' takes the extremes,
    'percentile' the PERCENTILE of the absolute values (symmetric); the frames go through
    onnxruntime's calibrators one at a time, so memory stays that of one frame.
    """
    import onnx

    if method not in METHODS:
        raise CalibrationError(f'calibration method {method!r} is not one of {list(METHODS)}')
    _, calibrate, _, _, _ = _ort_modules()
    _, keys = graph_keys(onnx.load_from_string(fp32_onnx).graph)
    with tempfile.TemporaryDirectory(prefix='seg_calibrate.') as tmp:
        path = Path(tmp) / 'model.onnx'
        path.write_bytes(fp32_onnx)
        if method == 'minmax':
            kind, options = calibrate.CalibrationMethod.MinMax, {}
        else:
            kind = calibrate.CalibrationMethod.Percentile
            options = {'percentile': PERCENTILE, 'symmetric': False}
        calibrator = calibrate.create_calibrator(
            path, list(op_types) or _op_types(),
            augmented_model_path=str(Path(tmp) / 'augmented.onnx'),
            calibrate_method=kind, providers=['CPUExecutionProvider'], extra_options=options)
        count = 0
        for x in frames:
            calibrator.collect_data(_OneFrame(x))
            count += 1
        if not count:
            raise CalibrationError('no calibration frames')
        data = calibrator.compute_data()
    ranges = {}
    for name, td in data.data.items():
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
        if name not in keys or not (math.isfinite(lo) and math.isfinite(hi)):
            raise CalibrationError(f'calibration of tensor {name!r} gave range [{lo}, {hi}]')
        ranges[keys[name]] = [min(lo, 0.0), max(hi, 0.0)]  # zero is exactly representable
    return ranges


class _OneFrame:
    """A calibration data reader of one input (onnxruntime.quantization.CalibrationDataReader)."""

    def __init__(self, x: np.ndarray) -> None:
        self._items = [{ACTIVATION_INPUT: x}]

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return self._items.pop() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


def session(data: bytes, threads: int, profile_prefix: Optional[str] = None) -> Any:
    """
    Make an onnxruntime CPU session of an ONNX model, as the engines make it.

    With ``profile_prefix`` onnxruntime's profiler is on and writes its JSON there
    (``bench/profile_onnx.py``); the engines never set it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning worker threads cost other processes on a shared CPU and measured slower here.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(data, options, providers=['CPUExecutionProvider'])


def compare(fp32_onnx: bytes, int8_onnx: bytes, frames: Sequence[np.ndarray],
            threads: int = 1) -> Tuple[float, float]:
    """
    Return (share of pixels with the same argmax label, fp32 / int8 median time) of two models.

    Each frame runs on one model, then on the other, after a first run of each that is not
    timed: a busy machine slows both alike, and the ratio stays comparable.
    """
    a, b = session(fp32_onnx, threads), session(int8_onnx, threads)
    times: Tuple[List[float], List[float]] = ([], [])
    same = total = 0
    for i, x in enumerate([frames[0], *frames]):
        labels = []
        for s, t in zip((a, b), times):
            t0 = time.perf_counter()
            labels.append(s.run(None, {ACTIVATION_INPUT: x})[0].argmax(1))  # (1, h, w)
            if i:
                t.append(time.perf_counter() - t0)
        if i:
            same += int((labels[0] == labels[1]).sum())
            total += labels[0].size
    return same / total, float(np.median(times[0]) / np.median(times[1]))


def split_frames(count: int) -> Tuple[List[int], List[int]]:
    """Return (indices measuring ranges, indices held out for the agreement) of ``count``."""
    if count < HOLD_OUT_EVERY:
        return list(range(count)), []
    held = [i for i in range(count) if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1]
    return [i for i in range(count) if i not in held], held


def make_record(fp32_onnx: bytes, frames: Sequence[np.ndarray], method: str, opset: int,
                exporter: str, state_sha256: str, input_size: Tuple[int, int], source: str,
                threads: int = 1, op_types: Sequence[str] = ()) -> Dict[str, Any]:
    """
    Measure the ranges and the held-out agreement; return the ``calibration`` record.

    ``op_types`` are the ONNX op types to quantize (default :data:`CONV_OPS`).
    """
    import onnx
    import onnxruntime
    import torch

    calib, held = split_frames(len(frames))
    if not calib:
        raise CalibrationError(f'{source}: no calibration frames')
    op_types = list(op_types) or list(CONV_OPS)
    ranges = measure_ranges(fp32_onnx, (frames[i] for i in calib), method, op_types)
    record = {
        'version': VERSION, 'method': method, 'opset': int(opset), 'exporter': exporter,
        'graph_sha256': graph_keys(onnx.load_from_string(fp32_onnx).graph)[0],
        'state_sha256': state_sha256, 'input_size': [int(v) for v in input_size],
        'ranges': ranges,
        'frames': {'source': source, 'calibration': len(calib), 'held_out': len(held)},
        'agreement': 0.0, 'torch_version': str(torch.__version__),
        'onnxruntime_version': str(onnxruntime.__version__), 'op_types': list(op_types),
    }
    check = [frames[i] for i in held] or [frames[i] for i in calib]
    agreement, speedup = compare(fp32_onnx, quantize(fp32_onnx, record, source), check, threads)
    record.update(agreement=agreement, speedup=round(speedup, 3))
    check_calibration(record)
    return record
