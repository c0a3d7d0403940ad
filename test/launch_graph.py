"""
Probe for the launch_testing tests (test_launch_*_graph.py): frames in, segmentation out.

The probe runs in a ROS context of its own and waits in bounded loops. Only imported where
launch_testing is installed (a ROS install running ``colcon test``).
"""

import time
from typing import Callable, Dict, List, Sequence, Tuple

from builtin_interfaces.msg import Time
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
STARTUP_S = 120.0  # a loaded machine imports torch and loads the model slowly


def frame(width: int, height: int, seed: int) -> np.ndarray:
    """Return a deterministic rgb8 test image ((H, W, 3) uint8)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_msg(rgb: np.ndarray, stamp: Time, frame_id: str) -> Image:
    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, data=rgb.tobytes())
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


class GraphProbe:
    """Publishes camera frames and collects the node's outputs by topic."""

    def __init__(self, listen: Sequence[str]) -> None:
        self.context = Context()
        rclpy.init(context=self.context, args=[])
        self.node = rclpy.create_node('launch_test_probe', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.messages: Dict[str, List[Image]] = {t: [] for t in listen}
        for topic in listen:
            self.node.create_subscription(Image, topic, self.messages[topic].append, RELIABLE)
        self._publishers = {}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def publish(self, topic: str, msg: Image) -> None:
        if topic not in self._publishers:
            self._publishers[topic] = self.node.create_publisher(Image, topic, RELIABLE)
        self._publishers[topic].publish(msg)

    def spin_until(self, done: Callable[[], bool], what: str, timeout: float,
                   every: Callable[[], None] = lambda: None, period: float = 1.0) -> None:
        """Spin until ``done()``, calling ``every()`` each ``period`` s; fail after timeout."""
        deadline, last = time.monotonic() + timeout, -1e9
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
            if time.monotonic() - last >= period:
                every()
                last = time.monotonic()
            self.executor.spin_once(timeout_sec=0.1)

    def topics(self) -> Dict[str, List[str]]:
        return dict(self.node.get_topic_names_and_types())

    def nodes(self) -> List[Tuple[str, str]]:
        return self.node.get_node_names_and_namespaces()
