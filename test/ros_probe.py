"""
Helpers for tests that run segmentation_node in its own process on a real DDS graph.

The node runs as the ``segmentation_node`` console script; the test talks to it through a probe
node in a ROS context of its own, waiting in bounded loops (``spin_once(timeout_sec=0.1)``).
"""

from collections import defaultdict
import contextlib
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from seg_perception.image_codec import channels

NODE_NAME = 'segmentation_node'
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
STARTUP_S = 90.0   # a loaded 2-core machine imports torch and rclpy slowly
ANSWER_S = 30.0
RESEND_S = 1.0     # best-effort inputs may lose a frame while discovery settles


class NodeProcess:
    """segmentation_node in a subprocess, output (stdout and stderr) in a log file."""

    def __init__(self, params: Sequence[str], log_path: Path,
                 ros_args: Sequence[str] = ()) -> None:
        exe = Path(sys.executable).with_name('segmentation_node')
        cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'seg_perception.node']
        cmd += ['--ros-args', *ros_args] + [arg for p in params for arg in ('-p', p)]
        env = dict(os.environ, RCUTILS_LOGGING_BUFFERED_STREAM='0',
                   RCUTILS_COLORIZED_OUTPUT='0', PYTHONUNBUFFERED='1')
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')

    def check_running(self) -> None:
        """Fail with the node's output when the process has ended."""
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f'segmentation_node exited with {rc}:\n{self.log()}')

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (as Ctrl-C) and wait; kill and fail if the node does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f'segmentation_node ignored SIGINT for {timeout} s:\n'
                                 f'{self.log()}') from None


class Probe:
    """A test-side node: publishes frames, collects answers and /diagnostics."""

    def __init__(self, name: str = 'probe') -> None:
        self.context = Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.messages: Dict[str, List[Any]] = defaultdict(list)
        self.diagnostics: List[DiagnosticArray] = []
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append,
                                      RELIABLE)
        self._publishers: Dict[Tuple[type, str], Any] = {}
        self._last_stamp_ns = 0

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def spin_until(self, predicate: Callable[[], Any], what: str, timeout: float = ANSWER_S,
                   process: Optional[NodeProcess] = None) -> None:
        """Spin until ``predicate()`` is true; fail naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if process is not None:
                process.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
            self.executor.spin_once(timeout_sec=0.1)

    @contextlib.contextmanager
    def listening(self, topics: Sequence[str], msg_type: type = Image,
                  qos: QoSProfile = RELIABLE) -> Iterator[None]:
        """Subscribe to ``topics`` for the duration of the block (messages in .messages)."""
        subs = [self.node.create_subscription(
            msg_type, t, lambda m, t=t: self.messages[t].append(m), qos) for t in topics]
        try:
            yield
        finally:
            for s in subs:
                self.node.destroy_subscription(s)
            for t in topics:
                self.messages.pop(t, None)

    def publisher(self, msg_type: type, topic: str) -> Any:
        key = (msg_type, topic)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, RELIABLE)
        return self._publishers[key]

    def stamp(self) -> Time:
        """Return a stamp no other frame of this probe has (the current time, made unique)."""
        ns = max(self.node.get_clock().now().nanoseconds, self._last_stamp_ns + 1)
        self._last_stamp_ns = ns
        return Time(sec=ns // 10**9, nanosec=ns % 10**9)

    def request(self, sends: Sequence[Tuple[str, Any]], expect: Dict[str, Time],
                process: Optional[NodeProcess] = None,
                timeout: float = ANSWER_S) -> Dict[str, Any]:
        """
        Publish ``sends`` until each ``expect`` topic has a message with the given stamp.

        Returns those messages by topic. Frames are sent again every RESEND_S while unanswered.
        """
        pubs = [(self.publisher(type(msg), topic), msg) for topic, msg in sends]
        found: Dict[str, Any] = {}
        last_sent = [-1e9]

        def answered() -> bool:
            for topic, stamp in expect.items():
                for m in self.messages.get(topic, []):
                    if topic not in found and m.header.stamp == stamp:
                        found[topic] = m
            if len(found) == len(expect):
                return True
            if time.monotonic() - last_sent[0] > RESEND_S:
                for pub, msg in pubs:
                    pub.publish(msg)
                last_sent[0] = time.monotonic()
            return False

        self.spin_until(answered, f'answers on {sorted(set(expect) - set(found))}', timeout,
                        process)
        return found

    def send_until_dropped(self, topic: str, msg: Any, camera_status: str, what: str,
                           process: NodeProcess) -> None:
        """
        Publish the malformed ``msg`` until the camera's ``dropped_malformed`` count rises.

        The count before is read from /diagnostics first; the frame goes out again every RESEND_S
        while the node has not counted it (a first frame may precede discovery).
        """
        pub = self.publisher(type(msg), topic)
        before = int(self.wait_status(camera_status, lambda v: True, 'diagnostics',
                                      process)['dropped_malformed'])
        last = [0.0]

        def dropped() -> bool:
            if time.monotonic() - last[0] > RESEND_S:
                pub.publish(msg)
                last[0] = time.monotonic()
            return int(self.status(camera_status)['dropped_malformed']) > before

        self.spin_until(dropped, what, process=process)

    def status(self, suffix: str) -> Optional[Dict[str, str]]:
        """Key/values of the newest /diagnostics status whose name ends with ``suffix``."""
        for arr in reversed(self.diagnostics):
            for st in arr.status:
                if st.name.startswith(NODE_NAME) and st.name.endswith(suffix):
                    return {kv.key: kv.value for kv in st.values}
        return None

    def wait_status(self, suffix: str, predicate: Callable[[Dict[str, str]], bool], what: str,
                    process: Optional[NodeProcess] = None,
                    timeout: float = ANSWER_S) -> Dict[str, str]:
        """Wait for a /diagnostics status (name ending ``suffix``) that satisfies ``predicate``."""
        result: Dict[str, Dict[str, str]] = {}

        def check() -> bool:
            values = self.status(suffix)
            if values is not None and predicate(values):
                result['values'] = values
                return True
            return False

        self.spin_until(check, what, timeout, process)
        return result['values']


def make_image(encoding: str, width: int, height: int, stamp: Time, frame_id: str = 'camera',
               seed: int = 0, pad: int = 0) -> Tuple[Image, np.ndarray]:
    """Make a random Image (rows padded by ``pad`` bytes); return it and its (H, W, C) pixels."""
    c = channels(encoding)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, c), dtype=np.uint8)  # (H, W, C)
    step = width * c + pad
    rows = np.zeros((height, step), dtype=np.uint8)
    rows[:, :width * c] = pixels.reshape(height, -1)
    msg = Image(header=Header(stamp=stamp, frame_id=frame_id), height=height, width=width,
                encoding=encoding, step=step, data=rows.tobytes())
    return msg, pixels


def image_array(msg: Image) -> np.ndarray:
    """Pixels of an output Image: (H, W) for mono8/32FC1, (H, W, C) otherwise."""
    if msg.encoding == '32FC1':
        assert msg.step == msg.width * 4, f'32FC1 step {msg.step} for width {msg.width}'
        dtype = np.dtype('>f4' if msg.is_bigendian else '<f4')
        flat = np.frombuffer(bytes(msg.data), dtype=dtype)
        return flat.reshape(msg.height, msg.width).astype(np.float32)
    c = channels(msg.encoding)
    assert msg.step == msg.width * c, f'{msg.encoding} step {msg.step} for width {msg.width}'
    assert len(msg.data) == msg.step * msg.height
    flat = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    return flat.reshape(msg.height, msg.width) if c == 1 else flat.reshape(
        msg.height, msg.width, c)


def start_node(params: Sequence[str], log_path: Path, probe: Probe,
               ready_topic: str = 'segmentation/class_table',
               ros_args: Sequence[str] = ()) -> NodeProcess:
    """Start the node and wait until it has published its class table (it is then ready)."""
    from std_msgs.msg import String

    node = NodeProcess(params, log_path, ros_args)
    seen: List[Any] = []
    try:
        sub = probe.node.create_subscription(String, ready_topic, seen.append, LATCHED)
        try:
            probe.spin_until(lambda: seen, f'{NODE_NAME} to start ({ready_topic})', STARTUP_S,
                             node)
        finally:
            probe.node.destroy_subscription(sub)
    except BaseException:
        node.stop()
        raise
    return node
