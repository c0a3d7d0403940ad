"""
The node's parameters: declared once from one dataclass, read into a frozen value.

Each field of :class:`NodeParams` is a ROS parameter; its metadata gives the descriptor (text,
range, allowed values, read-only) and the ``--help`` text. ``config/segment.yaml`` repeats the
defaults for users and launch files, and a test keeps the two in step. Floating-point parameters
also take integers (``-p log_period:=0``, ``ros2 param set ... overlay_alpha 1``).
"""

from dataclasses import dataclass, field, fields
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from seg_perception.image_codec import MAX_INPUT_PIXELS
from seg_perception.postprocess import LABEL_UPSAMPLING
from seg_perception.ros_args import check_camera

DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')
MAX_INPUT_SIDE = 4096
# Engine settings of seg_perception.engines.ACCELERATIONS (repeated so this module needs no torch).
ACCELERATIONS = ('auto', 'none', 'channels_last', 'compile', 'cuda_graphs', 'onnxruntime',
                 'onnxruntime_int8')
_ROS_TYPES = {str: 'string', int: 'integer', float: 'double', bool: 'bool', tuple: 'string array'}


def _param(default: Any, description: str, read_only: bool = True,
           int_range: Optional[Tuple[int, int, int]] = None,
           float_range: Optional[Tuple[float, float]] = None,
           choices: Optional[Sequence[str]] = None, constraints: str = '') -> Any:
    meta = {'description': description, 'read_only': read_only, 'int_range': int_range,
            'float_range': float_range, 'choices': tuple(choices) if choices else None,
            'constraints': constraints}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NodeParams:
    """Values of the segmentation node's parameters (validated on construction)."""

    model: str = _param('', 'model file (.pt); empty = the bundled default model')
    device: str = _param('auto', 'inference device', constraints='auto, cpu, cuda or cuda:N')
    precision: str = _param('fp32', 'inference precision', choices=('fp32', 'fp16', 'bf16'))
    accelerate: str = _param('auto', 'how the network runs (seg_perception/engines.py): auto = '
                             'the fastest for the device (CPU fp32: onnxruntime, int8 where '
                             'the model file carries a calibration within bound; CUDA: '
                             'channels_last)', choices=ACCELERATIONS)
    input_width: int = _param(0, "network input width in px (multiple of 8); 0 = the model's own",
                              int_range=(0, MAX_INPUT_SIDE, 8))
    input_height: int = _param(0, "network input height in px (multiple of 8); 0 = the model's "
                               'own', int_range=(0, MAX_INPUT_SIDE, 8))
    overlay_alpha: float = _param(0.5, 'weight of the class colours in the overlay image',
                                  read_only=False, float_range=(0.0, 1.0))
    reliability: str = _param('best_effort', 'input subscription reliability',
                              choices=('best_effort', 'reliable'))
    depth: int = _param(1, 'input subscription queue depth (KEEP_LAST)', int_range=(1, 100, 1))
    cameras: Tuple[str, ...] = _param(
        (), 'camera namespaces, e.g. [front, rear]: subscribe <camera>/image and publish '
        '<camera>/segmentation/*; empty = one camera on image')
    input_transport: str = _param('raw', 'raw: sensor_msgs/Image on image; compressed: '
                                  'sensor_msgs/CompressedImage on image/compressed',
                                  choices=('raw', 'compressed'))
    confidence_encoding: str = _param('mono8', 'segmentation/confidence encoding: mono8 = max '
                                      'softmax probability x 255, 32FC1 = the probability',
                                      choices=('mono8', '32FC1'))
    label_upsampling: str = _param(
        'auto', 'labels at camera size: nearest = copy the network-size argmax; bilinear = '
        'logits enlarged to camera size, then argmax; bilinear_x2/_x4 = argmax at 2x/4x the '
        'network size, then nearest; auto = bilinear on CUDA, bilinear_x2 on the CPU',
        choices=LABEL_UPSAMPLING)
    output_scale: float = _param(1.0, 'size of segmentation/color and overlay (and '
                                 'overlay/compressed) relative to the camera image; labels and '
                                 'confidence stay at camera size', float_range=(0.05, 1.0))
    jpeg_quality: int = _param(80, 'JPEG quality of segmentation/overlay/compressed',
                               int_range=(1, 100, 1))
    stage_timing: bool = _param(False, 'time each stage of the worker and report p50/p99 in '
                                '/diagnostics (stage_<name>_p50_ms); adds CUDA synchronisations')
    diagnostics_period: float = _param(1.0, 'seconds between /diagnostics messages',
                                       float_range=(0.1, 60.0))
    log_period: float = _param(10.0, 'seconds between statistics log lines; 0 = none',
                               float_range=(0.0, 3600.0))
    max_input_pixels: int = _param(MAX_INPUT_PIXELS, 'largest input frame (width x height) '
                                   'taken; larger ones are dropped as malformed, compressed ones '
                                   'before decoding', int_range=(1, 1 << 30, 1))

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f'parameter cameras: duplicate names in {list(self.cameras)}')

    @property
    def input_size(self) -> Tuple[int, int]:
        """(width, height) asked for; 0 means the model's own for that side."""
        return self.input_width, self.input_height

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> 'NodeParams':
        """Build from values by name; unknown names are an error, None means the default."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f'unknown parameters {unknown} (known: {sorted(names)})')
        kwargs = {k: coerce(k, v) for k, v in values.items() if v is not None}
        if 'cameras' in kwargs:
            kwargs['cameras'] = tuple(kwargs['cameras'])
        return cls(**kwargs)


def check_value(name: str, value: Any) -> None:
    """Raise ValueError naming the parameter when ``value`` breaks its range or allowed values."""
    meta = _field(name).metadata
    if meta['int_range']:
        lo, hi, step = meta['int_range']
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi or (
                value - lo) % step:
            raise ValueError(f'parameter {name}: {value!r} is not an integer in [{lo}, {hi}]'
                             + (f' in steps of {step}' if step > 1 else ''))
    if meta['float_range']:
        lo, hi = meta['float_range']
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(
                value) or not lo <= value <= hi:
            raise ValueError(f'parameter {name}: {value!r} is not a number in [{lo}, {hi}]')
    if meta['choices'] and value not in meta['choices']:
        raise ValueError(f'parameter {name}: {value!r} is not one of {list(meta["choices"])}')
    if name == 'device' and not DEVICE_PATTERN.match(str(value)):
        raise ValueError(f'parameter device: {value!r} is not auto, cpu, cuda or cuda:N')
    if name == 'cameras':
        for cam in value:
            try:
                check_camera(cam)
            except ValueError as e:
                raise ValueError(f'parameter cameras: {e}') from None


def is_float(name: str) -> bool:
    """Tell whether a parameter is floating point (it then takes integers too)."""
    return isinstance(_field(name).default, float)


def coerce(name: str, value: Any) -> Any:
    """Return an integer given for a floating-point parameter as a float; others unchanged."""
    if is_float(name) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def defaults() -> Dict[str, Any]:
    """Return the declared default of every parameter (tuples as lists, as YAML writes them)."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in fields(NodeParams)}


def descriptor(name: str) -> ParameterDescriptor:
    """Build the ParameterDescriptor a parameter is declared with."""
    meta = _field(name).metadata
    constraints = meta['constraints']
    if meta['choices']:
        constraints = 'one of ' + ', '.join(meta['choices'])
    d = ParameterDescriptor(name=name, description=meta['description'],
                            read_only=meta['read_only'], additional_constraints=constraints,
                            dynamic_typing=is_float(name))  # rcl types `:=0` as an integer
    if meta['int_range']:
        lo, hi, step = meta['int_range']
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=step)]
    if meta['float_range']:
        lo, hi = meta['float_range']
        d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    return d


def runtime_parameters() -> Tuple[str, ...]:
    """Return the names of the parameters that may change while the node runs."""
    return tuple(f.name for f in fields(NodeParams) if not f.metadata['read_only'])


def declare(node: Node) -> NodeParams:
    """
    Declare every parameter on ``node`` (overrides applied) and return their values.

    Raises ValueError naming the parameter for a value outside its allowed set.
    """
    values = {}
    for f in fields(NodeParams):
        default = f.default
        if isinstance(default, tuple) and not default:
            # An empty list has no ROS type of its own; declare the type and leave it unset.
            default = Parameter.Type.STRING_ARRAY
        elif isinstance(default, tuple):
            default = list(default)
        value = node.declare_parameter(f.name, default, descriptor(f.name)).value
        if not f.metadata['read_only'] and coerce(f.name, value) is not value:
            # `-p overlay_alpha:=1` gave an integer: hold the double it means from the start.
            node.set_parameters([Parameter(f.name, Parameter.Type.DOUBLE, coerce(f.name, value))])
        values[f.name] = value
    return NodeParams.from_values(values)


def describe() -> List[Tuple[str, str, Any, List[str], str]]:
    """Return (name, ROS type, default, limits, description) of every parameter, in order."""
    rows = []
    for f in fields(NodeParams):
        meta = f.metadata
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        limits = []
        if meta['int_range']:
            lo, hi, step = meta['int_range']
            limits.append(f'{lo}..{hi}' + (f' step {step}' if step > 1 else ''))
        if meta['float_range']:
            limits.append('%g..%g' % meta['float_range'])
        if meta['choices']:
            limits.append(' | '.join(meta['choices']))
        if meta['constraints']:
            limits.append(meta['constraints'])
        if not meta['read_only']:
            limits.append('changeable at run time')
        rows.append((f.name, _ROS_TYPES[type(f.default)], default, limits, meta['description']))
    return rows


def usage(program: str) -> str:
    """Return the ``--help`` text: how to pass parameters, each one's type, default, meaning."""
    lines = [f'usage: {program} [-h] [--ros-args [-p NAME:=VALUE]... [--params-file FILE] '
             '[-r __ns:=/NAMESPACE]]', '',
             'Segments camera images (sensor_msgs/Image or CompressedImage) with ERFNet and '
             'publishes', 'segmentation/labels, color, overlay and confidence with the input '
             'header.', '', 'parameters (-p NAME:=VALUE; defaults in config/segment.yaml):']
    for name, kind, default, limits, description in describe():
        extra = f' [{"; ".join(limits)}]' if limits else ''
        lines.append(f'  {name} ({kind}, default {default!r}){extra}')
        lines.append(f'      {description}')
    return '\n'.join(lines)


def _field(name: str) -> Any:
    for f in fields(NodeParams):
        if f.name == name:
            return f
    raise ValueError(f'unknown parameter {name!r}')
