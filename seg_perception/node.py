"""
The ROS 2 node ``segmentation_node``: camera images in, class labels, colours and overlay out.

ROS glue only: parameters, QoS, subscriptions, publishers, a worker thread and diagnostics. The
work is done by :class:`seg_perception.pipeline.SegmentationPipeline`. Subscription callbacks
check a frame and keep only the newest one per camera (replaced frames are counted as drops); the
worker takes the newest frame of every camera, segments them in one forward pass and publishes
the outputs that have subscribers, each with the input's header. A failure in one frame costs
that frame only: it is logged (throttled per topic and kind of fault) and the others go on.
"""

from dataclasses import dataclass, replace
import re
import signal
import sys
import threading
import time
from typing import Any, Dict, Hashable, List, Optional, Sequence, Set, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import NameValidationException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from seg_perception import label_info
from seg_perception.allocator import keep_frame_buffers
from seg_perception import params as node_params
from seg_perception import ros_image
from seg_perception.diagnostics import (FAR_STAMP_S, NodeStats, OUTPUT_NAMES, stamp_age,
                                        statistics_line, Throttle)
from seg_perception.image_codec import (check_compressed, check_pixels, decode_compressed,
                                        ImageFormatError)
from seg_perception.parameter_service import GuardedParameterService
from seg_perception.pipeline import class_table_json, Frame, Outputs, SegmentationPipeline
from seg_perception.resources import default_model_path, ResourceNotFoundError
from seg_perception.ros_args import name_error, read_params_file
from seg_perception.timing import NO_TIMER, StageTimer
from seg_training.base.logtext import loggable, MAX_LINE_CHARS
from seg_training.nets.checkpoint import load_model, ModelFileError
from seg_training.nets.provenance import log_model

NODE_NAME = 'segmentation_node'
RCLError = _rclpy.RCLError
# Outputs are reliable so both RViz (reliable) and best-effort subscribers match.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# Published once; late subscribers still get it.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
WARN_PERIOD_S = 5.0
# Every topic of a camera, relative to it (_make_camera); the longest decide whether names fit.
TOPIC_NAMES = ('image', 'image/compressed', 'segmentation/labels', 'segmentation/color',
               'segmentation/overlay', 'segmentation/overlay/compressed',
               'segmentation/confidence', 'segmentation/class_table', 'segmentation/label_info')
SPIN_PERIOD_S = 0.1  # longest wait of the spin loop before it looks for a stop request


class NodeConfigError(RuntimeError):
    """Parameters or a model that keep the node from starting; the message says which."""


class NodeArgumentError(NodeConfigError):
    """A ROS command-line argument (params file, remapping, namespace) the node cannot take."""


def input_qos(params: node_params.NodeParams) -> QoSProfile:
    """Return the input subscription QoS: sensor data (best effort, depth 1) unless configured."""
    reliability = (ReliabilityPolicy.RELIABLE if params.reliability == 'reliable'
                   else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=params.depth,
                      reliability=reliability, durability=DurabilityPolicy.VOLATILE)


class LatestFrames:
    """The newest pending item per key; a newer item replaces (drops) one not yet taken."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: Dict[Hashable, Any] = {}
        self._closed = False

    def put(self, key: Hashable, item: Any) -> bool:
        """Store ``item`` for ``key``; return True when it replaced an untaken item."""
        with self._cond:
            replaced = key in self._slots
            self._slots[key] = item
            self._cond.notify()
            return replaced

    def take_all(self, timeout: float) -> List[Tuple[Hashable, Any]]:
        """Wait up to ``timeout`` s for items; return and clear all of them (insertion order)."""
        with self._cond:
            self._cond.wait_for(lambda: self._slots or self._closed, timeout)
            items = list(self._slots.items())
            self._slots.clear()
            return items

    def close(self) -> None:
        """Wake the waiting taker for good."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class _Camera:
    """One camera's topics: its input subscription and its output publishers."""

    name: str
    topic: str  # resolved input topic, the key in statistics and warnings
    msg_type: str
    publishers: Dict[str, Publisher]
    class_table: Publisher
    subscription: Any = None
    label_info: Optional[Publisher] = None  # vision_msgs/LabelInfo where vision_msgs exists


@dataclass
class _Pending:
    """A received frame waiting for the worker (raw frames are checked and viewed already)."""

    header: Header
    frame: Optional[Frame] = None
    compressed: Optional[CompressedImage] = None


@dataclass
class _Job:
    camera: _Camera
    header: Header
    frame: Frame
    wanted: Outputs
    compressed_overlay: bool = False  # segmentation/overlay/compressed has subscribers


class SegmentationNode(Node):
    """Segments camera topics; docs/node.md has its topics and parameters."""

    def __init__(self, **kwargs: Any) -> None:
        services = kwargs.pop('start_parameter_services', True)
        try:
            super().__init__(NODE_NAME, start_parameter_services=False, **kwargs)
        except (NameValidationException, RCLError) as e:  # a namespace or name given with -r
            raise NodeArgumentError(f'invalid ROS arguments: {_rcl_reason(e)}') from None
        if services:  # rclpy's, refusing what a peer sends instead of raising on it
            self._parameter_service = GuardedParameterService(self)
        try:
            self.params = node_params.declare(self)
        except (ParameterException, ValueError, TypeError) as e:
            raise NodeConfigError(f'invalid parameter: {e}') from None
        names = self.params.cameras or ('',)
        for name in names:
            self._check_topic_names(name)
        topics = [self._input_topic(name) for name in names]
        if len(set(topics)) != len(topics):
            raise NodeConfigError(f'parameter cameras: {list(names)} name the same topic twice '
                                  f'({", ".join(topics)})')
        self.model_path = self._model_path()
        self.pipeline = self._load_pipeline()
        log_model(self.pipeline.info.provenance, self.model_path, self.get_logger())
        self._cameras = [self._make_camera(name) for name in names]
        self.stats = NodeStats(topics, time.monotonic())
        self._throttle = Throttle(WARN_PERIOD_S)
        self._far_stamp_warned: Set[str] = set()  # topics warned about stamps of another clock
        self._outpaced_warned: Set[str] = set()  # topics warned about a camera faster than this
        self._frames = LatestFrames()
        self._timer = StageTimer(max_records=1000) if self.params.stage_timing else NO_TIMER
        self.add_pre_set_parameters_callback(self._coerce_parameters)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # runs with use_sim_time and no /clock
        self.create_timer(self.params.diagnostics_period, self._publish_diagnostics,
                          clock=steady)
        if self.params.log_period > 0:
            self.create_timer(self.params.log_period, self._log_statistics, clock=steady)
        table = String(data=class_table_json(self.pipeline.info.classes, self.model_path))
        for cam in self._cameras:
            cam.class_table.publish(table)
            if cam.label_info is not None:
                header = Header(stamp=self.get_clock().now().to_msg())
                cam.label_info.publish(label_info.label_info_msg(self.pipeline.info.classes,
                                                                 header))
        self._worker = threading.Thread(target=self._work, name='segmentation_worker')
        self._worker.start()
        self.get_logger().info(
            f'segmenting {", ".join(c.topic for c in self._cameras)} '
            f'({self.params.input_transport}) with {self.model_path} on {self.pipeline.device} '
            f'({self.pipeline.precision}, engine {self.pipeline.engine.describe()}, '
            f'network input {self.pipeline.input_size[0]}x'
            f'{self.pipeline.input_size[1]}, {self.pipeline.info.num_classes} classes, '
            f'label upsampling {self._label_upsampling_text()})')

    # --- set-up -------------------------------------------------------------------------------

    def _model_path(self) -> str:
        if self.params.model:
            return self.params.model
        try:
            return str(default_model_path())
        except ResourceNotFoundError as e:
            raise NodeConfigError(str(e)) from None

    def _load_pipeline(self) -> SegmentationPipeline:
        try:
            model, info = load_model(self.model_path)
            w = self.params.input_width or info.input_size[0]
            h = self.params.input_height or info.input_size[1]
            return SegmentationPipeline(model, info, device=self.params.device,
                                        precision=self.params.precision, input_size=(w, h),
                                        accelerate=self.params.accelerate,
                                        label_upsampling=self.params.label_upsampling,
                                        source=str(self.model_path))
        except (ModelFileError, OSError, RuntimeError, ValueError) as e:
            raise NodeConfigError(f'cannot run model {self.model_path}: {e}') from None

    def _check_topic_names(self, camera: str) -> None:
        """Resolve each topic of a camera; NodeConfigError says which one rcl refuses, and why."""
        prefix = f'{camera}/' if camera else ''
        for name in TOPIC_NAMES:
            try:
                self.resolve_topic_name(prefix + name)
            except RCLError as e:
                where = (f"parameter cameras: '{loggable(camera)}'" if camera
                         else f'namespace {self.get_namespace()}')
                raise NodeConfigError(f'{where}: topic {loggable(prefix + name)} is not a valid '
                                      f'ROS name: {_rcl_reason(e)}') from None

    def _input_topic(self, camera: str) -> str:
        prefix = f'{camera}/' if camera else ''
        suffix = '/compressed' if self.params.input_transport == 'compressed' else ''
        return self.resolve_topic_name(prefix + 'image' + suffix)

    def _make_camera(self, name: str) -> _Camera:
        prefix = f'{name}/' if name else ''
        out = prefix + 'segmentation/'
        publishers = {
            'labels': self.create_publisher(Image, out + 'labels', OUTPUT_QOS),
            'color': self.create_publisher(Image, out + 'color', OUTPUT_QOS),
            'overlay': self.create_publisher(Image, out + 'overlay', OUTPUT_QOS),
            'confidence': self.create_publisher(Image, out + 'confidence', OUTPUT_QOS),
            'overlay_compressed': self.create_publisher(CompressedImage,
                                                        out + 'overlay/compressed', OUTPUT_QOS),
        }
        table = self.create_publisher(String, out + 'class_table', LATCHED_QOS)
        qos = input_qos(self.params)
        topic = self._input_topic(name)
        if self.params.input_transport == 'compressed':
            cam = _Camera(name, topic, 'sensor_msgs/CompressedImage', publishers, table)
            cam.subscription = self.create_subscription(
                CompressedImage, topic, lambda msg: self._on_compressed(cam, msg), qos)
        else:
            # Raw: the callback gets the serialized bytes and views the pixels in them.
            cam = _Camera(name, topic, 'sensor_msgs/Image', publishers, table)
            cam.subscription = self.create_subscription(
                Image, topic, lambda data: self._on_serialized_image(cam, data), qos, raw=True)
        if label_info.available():
            cam.label_info = self.create_publisher(label_info.LabelInfo, out + 'label_info',
                                                   LATCHED_QOS)
        return cam

    # --- callbacks (never block) --------------------------------------------------------------

    def _on_serialized_image(self, cam: _Camera, data: bytes) -> None:
        self.stats.received(cam.topic, time.monotonic())
        try:
            header, frame = ros_image.frame_from_serialized(data)  # checks every field; a view
            check_pixels(frame.image.shape[1], frame.image.shape[0], self.params.max_input_pixels)
        except ImageFormatError as e:
            self._malformed(cam, e)
            return
        self._offer(cam, _Pending(header, frame=frame))

    def _on_compressed(self, cam: _Camera, msg: CompressedImage) -> None:
        self.stats.received(cam.topic, time.monotonic())
        try:
            # Signature and size from the header only; decoding waits for the worker.
            check_compressed(msg.format, msg.data, self.params.max_input_pixels)
        except ImageFormatError as e:
            self._malformed(cam, e)
            return
        self._offer(cam, _Pending(msg.header, compressed=msg))

    def _offer(self, cam: _Camera, pending: _Pending) -> None:
        if self._frames.put(cam.topic, pending):
            self.stats.overwritten(cam.topic, time.monotonic())

    def _malformed(self, cam: _Camera, error: ImageFormatError) -> None:
        now = time.monotonic()
        self.stats.malformed(cam.topic, now)
        # A camera repeating a kind of fault (whatever its values) warns once per period; a new
        # kind warns at once.
        allowed, held = self._throttle.allow((cam.topic, 'malformed', error.kind), now)
        if allowed:
            more = f' ({held} more like it since the last warning)' if held else ''
            self.get_logger().warning(
                f'{cam.topic}: dropped malformed {cam.msg_type}: {loggable(error)}{more}')

    def _failed(self, cam: _Camera, header: Header, stage: str, error: Exception) -> None:
        self.stats.failed(cam.topic)
        allowed, held = self._throttle.allow((cam.topic, stage, type(error).__name__),
                                             time.monotonic())
        if allowed:
            stamp = f'{header.stamp.sec}.{header.stamp.nanosec:09d}'
            more = f' ({held} more like it since the last error)' if held else ''
            self.get_logger().error(f'{cam.topic}: frame stamped {stamp} lost, {stage} failed: '
                                    f'{type(error).__name__}: {loggable(error)}{more}')

    def _coerce_parameters(self, parameters: List[Parameter]) -> List[Parameter]:
        # `ros2 param set ... overlay_alpha 1` sends an integer: store the double it means.
        return [Parameter(p.name, Parameter.Type.DOUBLE, node_params.coerce(p.name, p.value))
                if p.type_ == Parameter.Type.INTEGER and p.name in node_params.runtime_parameters()
                and node_params.is_float(p.name) else p for p in parameters]

    def _check_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        for p in parameters:
            if p.name in node_params.runtime_parameters():
                try:
                    node_params.check_value(p.name, p.value)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: List[Parameter]) -> None:
        changes = {p.name: p.value for p in parameters
                   if p.name in node_params.runtime_parameters()}
        if changes:
            self.params = replace(self.params, **changes)
            self.get_logger().info(f'parameters changed: {changes}')

    # --- worker -------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._frames.closed:
            batch = self._frames.take_all(timeout=0.5)
            if not batch:
                continue
            try:
                self._process([pending for _, pending in batch],
                              [self._camera(topic) for topic, _ in batch])
            except Exception as e:  # the worker outlives a failed frame; shutdown ends it
                if self._frames.closed or not self.context.ok():
                    return
                allowed, held = self._throttle.allow(('worker', type(e).__name__),
                                                     time.monotonic())
                if allowed:
                    self.get_logger().error(
                        f'segmentation failed: {type(e).__name__}: {loggable(e)}')

    def _camera(self, topic: str) -> _Camera:
        return next(c for c in self._cameras if c.topic == topic)

    def _process(self, pendings: Sequence[_Pending], cameras: Sequence[_Camera]) -> None:
        jobs = []
        for cam, pending in zip(cameras, pendings):
            job = self._per_frame(cam, pending.header, 'decoding', self._prepare, cam, pending)
            if job is not None:
                jobs.append(job)
        if not jobs:
            return
        for job, result in zip(jobs, self._segment(jobs)):
            if result is not None:
                self._per_frame(job.camera, job.header, 'publishing', self._publish, job, result)
        self._timer.next()

    def _per_frame(self, cam: _Camera, header: Header, stage: str, step: Any,
                   *args: Any) -> Any:
        """Run one frame's ``step``; a failure costs that frame only (logged, counted): None."""
        try:
            return step(*args)
        except Exception as e:
            if self._frames.closed or not self.context.ok():
                raise  # shutting down: the worker ends
            if isinstance(e, ImageFormatError) and stage != 'publishing':
                self._malformed(cam, e)  # the input's fault
            else:
                self._failed(cam, header, stage, e)
        return None

    def _prepare(self, cam: _Camera, pending: _Pending) -> Optional[_Job]:
        """Decode a compressed frame and find the outputs wanted; None when none is."""
        frame = pending.frame
        if frame is None:
            msg = pending.compressed
            image, encoding = decode_compressed(msg.format, msg.data,
                                                self.params.max_input_pixels)
            frame = Frame(image, encoding)
        subscribers = {name: pub.get_subscription_count()
                       for name, pub in cam.publishers.items()}
        compressed = subscribers['overlay_compressed'] > 0
        wanted = Outputs(**{name: subscribers[name] > 0 for name in OUTPUT_NAMES})
        if not wanted.any() and not compressed:
            self.stats.skipped(cam.topic)
            return None
        return _Job(cam, pending.header, frame, wanted, compressed)

    def _segment(self, jobs: Sequence[_Job]) -> List[Any]:
        """Results of the jobs in one forward pass; if that fails, one by one (None: lost)."""
        union = Outputs(**{name: any(getattr(j.wanted, name) for j in jobs)
                           for name in OUTPUT_NAMES})
        if any(j.compressed_overlay for j in jobs):
            union = replace(union, overlay=True)
        if len(jobs) > 1:
            try:
                return self._forward(jobs, union)
            except Exception:
                if self._frames.closed or not self.context.ok():
                    raise
                # One frame broke the batch: each alone, so only the frame at fault is lost.
        return [self._per_frame(j.camera, j.header, 'segmentation', self._forward_one, j)
                for j in jobs]

    def _forward_one(self, job: _Job) -> Any:
        wanted = replace(job.wanted, overlay=True) if job.compressed_overlay else job.wanted
        return self._forward([job], wanted)[0]

    def _forward(self, jobs: Sequence[_Job], union: Outputs) -> List[Any]:
        alpha = self.params.overlay_alpha
        timer = self._timer
        if timer.enabled:
            self._time_input(jobs)
        t0 = time.perf_counter()
        results = self.pipeline([j.frame for j in jobs], union, alpha,
                                output_scale=self.params.output_scale, timer=timer)
        seconds = time.perf_counter() - t0
        computed = {name: sum(getattr(r, name) is not None for r in results)
                    for name in OUTPUT_NAMES}
        self.stats.forward(time.monotonic(), seconds, len(jobs), computed)
        return results

    def _time_input(self, jobs: Sequence[_Job]) -> None:
        """Record the time from each frame's stamp to the worker taking it (stage 'input')."""
        now_ns = self.get_clock().now().nanoseconds
        for job in jobs:
            age = stamp_age(job.header.stamp.sec, job.header.stamp.nanosec, now_ns)
            if age is not None:
                self._timer.add('input', age / len(jobs))

    def _publish(self, job: _Job, result: Any) -> None:
        # Each message is serialized once, straight from the pipeline's array (one copy).
        pubs, header, timer = job.camera.publishers, job.header, self._timer
        out = []
        with timer('message'):
            if job.wanted.labels:
                out.append(('labels', ros_image.serialized_image(header, result.labels,
                                                                 'mono8')))
        with timer('publish'):
            for name, data in out:  # labels first: the latency users see
                pubs[name].publish(data)
        if timer.enabled and out:
            sent = stamp_age(header.stamp.sec, header.stamp.nanosec,
                             self.get_clock().now().nanoseconds)
            if sent is not None:
                timer.add('stamp_to_labels_sent', sent)
        out = []
        with timer('message'):
            if job.wanted.color:
                out.append(('color', ros_image.serialized_image(header, result.color, 'rgb8')))
            if job.wanted.overlay:
                out.append(('overlay', ros_image.serialized_image(
                    header, result.overlay, result.overlay_encoding)))
            if job.wanted.confidence:
                enc = self.params.confidence_encoding
                out.append(('confidence', ros_image.serialized_image(
                    header, ros_image.confidence_image(result.confidence, enc), enc)))
        if job.compressed_overlay:
            with timer('jpeg'):
                fmt, data = ros_image.jpeg_overlay(result.overlay, result.overlay_encoding,
                                                   self.params.jpeg_quality)
                out.append(('overlay_compressed',
                            ros_image.serialized_compressed(header, fmt, data)))
        with timer('publish'):
            for name, data in out:
                pubs[name].publish(data)
        self._count_published(job.camera, header)

    def _count_published(self, cam: _Camera, header: Header) -> None:
        """Count a published frame with its stamp-to-now latency (any stamp is taken)."""
        age = stamp_age(header.stamp.sec, header.stamp.nanosec,
                        self.get_clock().now().nanoseconds)
        if age is not None and abs(age) > FAR_STAMP_S:
            self._warn_far_stamp(cam, age)
            age = None  # another clock: no latency to measure
        self.stats.published(cam.topic, time.monotonic(), age)

    def _warn_far_stamp(self, cam: _Camera, age: float) -> None:
        if cam.topic in self._far_stamp_warned:
            return
        self._far_stamp_warned.add(cam.topic)
        sim = self.get_parameter('use_sim_time').value
        where = 'behind' if age > 0 else 'ahead of'
        self.get_logger().warning(
            f'{cam.topic}: header stamps are {abs(age):.1f} s {where} this node\'s clock '
            f'(use_sim_time is {str(sim).lower()}); latency is not measured for frames more '
            f'than {FAR_STAMP_S:g} s off. Playing a recording? Run the node with '
            'use_sim_time:=true and publish /clock (ros2 bag play --clock). A live camera: '
            'synchronise its clock with this machine\'s. (Warned once per topic.)')

    def _warn_outpaced(self, cam: _Camera, now: float) -> None:
        """Warn once per camera when it delivers frames faster than this node takes them."""
        if cam.topic in self._outpaced_warned:
            return
        rates = self.stats.outpaced(cam.topic, now)
        if rates is None:
            return
        self._outpaced_warned.add(cam.topic)
        camera_fps, node_fps = rates
        self.get_logger().warning(
            f'{cam.topic}: the camera delivers {camera_fps:.1f} fps, this node sustains '
            f'{node_fps:.1f} fps: the newest frame wins and the others are dropped (counted as '
            'dropped_overwritten in /diagnostics). To keep up, lower the cost per frame: a '
            'smaller network input (input_width, input_height), a faster engine (parameter '
            'accelerate: onnxruntime or an int8 engine), output_scale below 1, fewer subscribed '
            'outputs; '
            'docs/performance.md maps speed against accuracy. (Warned once per topic.)')

    # --- diagnostics --------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        for cam in self._cameras:
            self._warn_outpaced(cam, now)
        totals = self.stats.totals(now)
        totals.update({'device': str(self.pipeline.device), 'precision': self.params.precision,
                       'model': self.model_path, 'engine': self.pipeline.engine.describe(),
                       'input_size': '%dx%d' % self.pipeline.input_size,
                       'overlay_alpha': f'{self.params.overlay_alpha:g}',
                       'label_upsampling': self._label_upsampling_text(),
                       'output_scale': f'{self.params.output_scale:g}'})
        if self._timer.enabled:
            for stage, v in self._timer.summary().items():
                totals[f'stage_{stage}_p50_ms'] = f'{v["p50_ms"]:.2f}'
                totals[f'stage_{stage}_p99_ms'] = f'{v["p99_ms"]:.2f}'
        status = [_status(f'{self.get_name()}: pipeline', totals['device'], DiagnosticStatus.OK,
                          f'{totals["fps"]} fps, latency p50 {totals["latency_p50_ms"]} ms',
                          totals)]
        for cam in self._cameras:
            values = self.stats.camera_values(cam.topic, now)
            for name, pub in cam.publishers.items():
                values[f'subscribers_{name}'] = str(pub.get_subscription_count())
            level, message = DiagnosticStatus.OK, f'{values["fps"]} fps'
            if self.stats.recent_malformed(cam.topic, now):
                level, message = DiagnosticStatus.WARN, 'dropping malformed frames'
            status.append(_status(f'{self.get_name()}: camera {cam.topic}', cam.topic, level,
                                  message, values))
        msg = DiagnosticArray(status=status)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(msg)

    def _label_upsampling_text(self) -> str:
        mode = self.pipeline.label_upsampling
        return f'{mode} (auto)' if self.params.label_upsampling == 'auto' else mode

    def _log_statistics(self) -> None:
        now = time.monotonic()
        self.get_logger().info('; '.join(
            statistics_line(self.stats.camera_values(cam.topic, now)) for cam in self._cameras))

    # --- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker (it finishes the frame at hand) and destroy the node."""
        self._frames.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        self.destroy_node()


def _status(name: str, hardware_id: str, level: bytes, message: str,
            values: Dict[str, str]) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def _rcl_reason(error: Exception) -> str:
    """Return an rcl error's message on one line, without rcl's source locations."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r',? at \S+\.\w+:\d+', '', text).replace('failed to initialize rcl: ', '')
    return loggable(text.strip())


def _argument_error(argv: Sequence[str]) -> Optional[str]:
    """
    Check what rcl would take badly: ``--params-file`` files and a ``__ns`` namespace.

    A parameter file must be readable and bounded (rcl parses it); a namespace must be valid
    (rcl refuses it only when the node is made). Returns the first problem, or None.
    """
    for flag, value in zip(argv, argv[1:]):
        if flag == '--params-file':
            try:
                read_params_file(value)
            except ValueError as e:
                return f'--params-file: {loggable(e)}'
        if flag in ('-r', '--remap') and value.split(':=')[0].split(':')[-1] == '__ns':
            reason = name_error(value.split(':=', 1)[-1], 'namespace')
            if reason:
                return f'{flag} {loggable(value)}: not a valid ROS namespace: {reason}'
    return None


def main(args: Optional[List[str]] = None) -> int:
    """
    Run the node until shutdown; return 1 when it cannot start (error logged).

    ROS arguments it cannot take (a parameter file that cannot be read or parsed, a remapping or
    namespace that is not a valid ROS name) return 2, with one line naming the argument.
    """
    argv = sys.argv if args is None else args
    own = argv[1:argv.index('--ros-args')] if '--ros-args' in argv else argv[1:]
    if '-h' in own or '--help' in own:
        print(node_params.usage(NODE_NAME))  # usage on stdout; ROS is not started
        return 0
    error = _argument_error(argv)
    if error is not None:
        print(f'{NODE_NAME}: error: {error}', file=sys.stderr)
        return 2
    keep_frame_buffers()  # frame-sized buffers reused warm, not faulted in again every frame
    # Signals are this function's: the first SIGINT/SIGTERM asks the spin loop to stop, later
    # ones (Ctrl-C under ros2 launch arrives from the terminal and from launch) change nothing,
    # so no interrupt can land inside rclpy's executor or the node's shutdown.
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as e:  # rcl parses the ROS arguments: params files, remappings
        print(f'{NODE_NAME}: error: invalid ROS arguments: {_rcl_reason(e)}', file=sys.stderr)
        return 2
    stop = threading.Event()
    _on_signals(lambda signum, frame: stop.set())
    node = None
    try:
        node = SegmentationNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)  # wakes to see a stop request
    except NodeConfigError as e:
        rclpy.logging.get_logger(NODE_NAME).fatal(loggable(e, MAX_LINE_CHARS))
        return 2 if isinstance(e, NodeArgumentError) else 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
        _on_signals(signal.SIG_IGN)  # also while the interpreter exits, when Python's are gone
    return 0


def _on_signals(handler: Any) -> None:
    """Handle SIGINT and SIGTERM with ``handler`` (only the main thread may set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


if __name__ == '__main__':
    raise SystemExit(main())
