"""
launch_testing: replay.launch.py plays a recorded two-camera drive into the node for one camera.

``image:=/front/image_raw`` runs ``/front/segmentation_node``; ``ros2 bag play --clock`` starts
once the node is ready, the front frames come back segmented on ``/front/segmentation/*`` with
their recorded headers, nothing is published for the rear camera, and the player ends cleanly.
Run twice: raw input and ``input_transport:=compressed`` (the bag holds both).
Run by ``colcon test`` in a ROS install with rosbag2 (or ``launch_test
test/node/test_launch_replay_graph.py``); skipped where launch_testing is absent.
"""

import atexit
from pathlib import Path
import shutil
import sys
import tempfile
import unittest

import pytest

pytest.importorskip('launch_testing', reason='launch_testing (a ROS 2 install) is not installed')
pytest.importorskip('launch_ros', reason='launch_ros (a ROS 2 install) is not installed')
pytest.importorskip('rosbags', reason='rosbags (rosdep key python3-rosbags-pip) is not installed')

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # launch_graph, under launch_test
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch_graph import frame, GraphProbe, STARTUP_S  # noqa: E402

import cv2  # noqa: E402

from seg_perception import ros_types  # noqa: E402
from seg_perception.bag import AtomicBagWriter  # noqa: E402

LAUNCH = Path(__file__).resolve().parents[2] / 'launch' / 'replay.launch.py'
CAMERAS = ('front', 'rear')
SIZE = (128, 64)  # (W, H)
FRAMES = 10
START_NS = 1_700_000_000_000_000_000


def stamps_ns():
    return [START_NS + i * 100_000_000 for i in range(FRAMES)]  # 10 fps


def write_drive(path: Path) -> None:
    """Record FRAMES frames of each camera on /<camera>/image_raw (rgb8) and .../compressed."""
    ts = ros_types.typestore()
    with AtomicBagWriter(path, 'mcap', overwrite=True) as writer:
        raw = {c: writer.add_connection(f'/{c}/image_raw', ros_types.IMAGE, typestore=ts)
               for c in CAMERAS}
        jpeg = {c: writer.add_connection(f'/{c}/image_raw/compressed',
                                         ros_types.COMPRESSED_IMAGE, typestore=ts)
                for c in CAMERAS}
        for i, stamp in enumerate(stamps_ns()):
            for k, cam in enumerate(CAMERAS):
                header = ros_types.make_header(stamp, f'{cam}_camera')
                rgb = frame(*SIZE, seed=10 * i + k)
                writer.write(raw[cam], stamp, ros_types.image_cdr(header, rgb, 'rgb8'))
                ok, data = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                assert ok
                writer.write(jpeg[cam], stamp, ros_types.compressed_cdr(
                    header, 'rgb8; jpeg compressed bgr8', data.tobytes()))


@pytest.mark.launch_test
@launch_testing.parametrize('transport', ['raw', 'compressed'])
def generate_test_description(transport):
    """Record the drive, then launch the replay (linger long: the test ends the launch)."""
    folder = Path(tempfile.mkdtemp(prefix='seg_perception_replay_test_'))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    write_drive(folder / 'drive')
    replay = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH)),
        launch_arguments={'bag': str(folder / 'drive'), 'image': '/front/image_raw',
                          'input_transport': transport, 'rate': '0.5', 'linger': '120'}.items())
    suffix = '/compressed' if transport == 'compressed' else ''
    return (LaunchDescription([replay, launch_testing.actions.ReadyToTest()]),
            {'ready_line': f'segmenting /front/image_raw{suffix} ({transport})'})


class TestReplayLaunch(unittest.TestCase):
    """While the launch runs: the recorded front frames come back segmented."""

    def test_front_frames_are_segmented_in_the_front_namespace(self, proc_output, proc_info,
                                                               ready_line):
        probe = GraphProbe(['/front/segmentation/labels', '/rear/segmentation/labels'])
        try:
            proc_output.assertWaitFor(ready_line, timeout=STARTUP_S)
            proc_info.assertWaitForStartup(process='bag_play', timeout=60.0)
            labels = probe.messages['/front/segmentation/labels']
            probe.spin_until(lambda: labels, 'labels of the front camera', timeout=60.0)
            proc_info.assertWaitForShutdown(process='bag_play', timeout=60.0)
            recorded = set(stamps_ns())
            for msg in labels:
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                self.assertIn(stamp, recorded)
                self.assertEqual(msg.header.frame_id, 'front_camera')
                self.assertEqual((msg.width, msg.height, msg.encoding), (*SIZE, 'mono8'))
            self.assertEqual(probe.messages['/rear/segmentation/labels'], [])
            topics = probe.topics()
            self.assertIn('/front/segmentation/overlay', topics)
            self.assertNotIn('/rear/segmentation/overlay', topics)
            self.assertNotIn('/segmentation/overlay', topics)
            self.assertIn(('segmentation_node', '/front'), probe.nodes())
        finally:
            probe.close()


@launch_testing.post_shutdown_test()
class TestReplayLaunchShutdown(unittest.TestCase):
    """After shutdown: the player finished the bag and the node ended cleanly."""

    def test_player_and_node_exit_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
