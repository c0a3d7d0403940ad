"""
launch_testing: segment.launch.py with ``cameras:=front,rear`` on a real graph.

One ``/segmentation_node`` reads ``/front/image_raw`` and ``/rear/image_raw`` and publishes
``/front/segmentation/*`` and ``/rear/segmentation/*`` with each frame's header; Ctrl-C (the
launch's SIGINT) ends it with status 0. Run by ``colcon test`` in a ROS install (or
``launch_test test/node/test_launch_segment_graph.py``); skipped where launch_testing is
absent.
"""

from pathlib import Path
import sys
import unittest

import pytest

pytest.importorskip('launch_testing', reason='launch_testing (a ROS 2 install) is not installed')
pytest.importorskip('launch_ros', reason='launch_ros (a ROS 2 install) is not installed')

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # launch_graph, under launch_test
from builtin_interfaces.msg import Time  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch_graph import frame, GraphProbe, image_msg, STARTUP_S  # noqa: E402

LAUNCH = Path(__file__).resolve().parents[2] / 'launch' / 'segment.launch.py'
CAMERAS = ('front', 'rear')
SIZE = (96, 64)  # (W, H) of the probe's frames


@pytest.mark.launch_test
def generate_test_description():
    """Launch the node for two cameras (reliable input: the probe publishes reliable)."""
    segment = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH)),
        launch_arguments={'cameras': ','.join(CAMERAS), 'reliability': 'reliable'}.items())
    return LaunchDescription([segment, launch_testing.actions.ReadyToTest()])


class TestSegmentLaunch(unittest.TestCase):
    """While the launch runs: frames of both cameras come back segmented, in their namespaces."""

    def test_both_cameras_are_segmented_in_their_namespaces(self, proc_output):
        outputs = [f'/{c}/segmentation/labels' for c in CAMERAS]
        probe = GraphProbe(outputs)
        try:
            proc_output.assertWaitFor('segmenting /front/image_raw, /rear/image_raw',
                                      timeout=STARTUP_S)
            stamps = {c: Time(sec=100 + i, nanosec=7) for i, c in enumerate(CAMERAS)}

            def send() -> None:
                for i, cam in enumerate(CAMERAS):
                    rgb = frame(*SIZE, seed=i)
                    probe.publish(f'/{cam}/image_raw', image_msg(rgb, stamps[cam], cam))

            probe.spin_until(lambda: all(probe.messages[t] for t in outputs),
                             'labels of both cameras', timeout=60.0, every=send)
            for cam, topic in zip(CAMERAS, outputs):
                msg = probe.messages[topic][0]
                self.assertEqual((msg.width, msg.height, msg.encoding), (*SIZE, 'mono8'))
                self.assertEqual((msg.header.stamp, msg.header.frame_id), (stamps[cam], cam))
            topics = probe.topics()
            for cam in CAMERAS:
                for name in ('labels', 'color', 'overlay', 'confidence', 'class_table'):
                    self.assertIn(f'/{cam}/segmentation/{name}', topics)
            self.assertNotIn('/segmentation/labels', topics)
            self.assertIn(('segmentation_node', '/'), probe.nodes())
        finally:
            probe.close()


@launch_testing.post_shutdown_test()
class TestSegmentLaunchShutdown(unittest.TestCase):
    """After the launch's SIGINT: the node ended cleanly."""

    def test_node_exits_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
