"""The node's parts that need no graph: newest-frame slots, message conversions, QoS, JSON."""

import json
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_perception import ros_image
from seg_perception.image_codec import ImageFormatError
from seg_perception.node import input_qos, LATCHED_QOS, LatestFrames
from seg_perception.node import OUTPUT_QOS
from seg_perception.params import NodeParams
from seg_perception.pipeline import class_table_json, Frame
from seg_training.base.classes import ClassTable, CUSTOM8


def test_newest_frame_per_camera_wins_and_cameras_batch_together():
    slots = LatestFrames()
    assert slots.put('front', 1) is False
    assert slots.put('rear', 'r1') is False
    assert slots.put('front', 2) is True  # frame 1 was never taken: a drop
    assert slots.take_all(timeout=0.0) == [('front', 2), ('rear', 'r1')]
    assert slots.take_all(timeout=0.0) == []
    assert slots.put('front', 3) is False  # taken slots are empty again


def test_take_all_waits_for_a_frame_and_close_wakes_it():
    slots = LatestFrames()
    got = []
    taker = threading.Thread(target=lambda: got.append(slots.take_all(timeout=30.0)))
    taker.start()
    time.sleep(0.05)
    slots.put('front', 'f')
    taker.join(timeout=10.0)
    assert got == [[('front', 'f')]]
    t0 = time.monotonic()
    closer = threading.Timer(0.05, slots.close)
    closer.start()
    assert slots.take_all(timeout=30.0) == []
    assert time.monotonic() - t0 < 10.0 and slots.closed


def test_image_messages_round_trip_without_copying_in():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # (H, W, C)
    header = Header(frame_id='cam')
    msg = ros_image.image_msg(header, pixels, 'bgr8')
    assert (msg.height, msg.width, msg.step, msg.encoding) == (4, 6, 18, 'bgr8')
    assert msg.header.frame_id == 'cam'
    frame = ros_image.frame_from_image(msg)
    assert frame.encoding == 'bgr8'
    np.testing.assert_array_equal(frame.image, pixels)
    assert not frame.image.flags.owndata  # a view on the message's buffer


def test_float_confidence_message():
    conf = np.array([[0.25, 1.0], [0.5, 0.125]], dtype=np.float32)
    msg = ros_image.image_msg(Header(), ros_image.confidence_image(conf, '32FC1'), '32FC1')
    assert (msg.step, msg.is_bigendian) == (8, sys.byteorder == 'big')
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), dtype=np.float32), conf.ravel())
    mono = ros_image.confidence_image(conf, 'mono8')
    np.testing.assert_array_equal(mono, [[64, 255], [128, 32]])
    with pytest.raises(ValueError, match='16UC1'):
        ros_image.confidence_image(conf, '16UC1')
    with pytest.raises(ImageFormatError, match='32FC1'):
        ros_image.image_msg(Header(), mono, '32FC1')


def test_malformed_image_message_names_the_field():
    msg = Image(height=2, width=3, encoding='rgb8', step=9, data=bytes(17))
    with pytest.raises(ImageFormatError, match='data has 17 bytes'):
        ros_image.frame_from_image(msg)


def test_compressed_message_to_frame():
    import cv2

    pixels = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', pixels)
    assert ok
    msg = CompressedImage(format='bgr8; png compressed bgr8', data=png.tobytes())
    frame = ros_image.frame_from_compressed(msg)
    assert frame.encoding == 'bgr8'
    np.testing.assert_array_equal(frame.image, pixels)


def test_qos_profiles():
    default = input_qos(NodeParams())
    assert default.reliability == ReliabilityPolicy.BEST_EFFORT and default.depth == 1
    custom = input_qos(NodeParams(reliability='reliable', depth=4))
    assert custom.reliability == ReliabilityPolicy.RELIABLE and custom.depth == 4
    assert OUTPUT_QOS.reliability == ReliabilityPolicy.RELIABLE
    assert LATCHED_QOS.durability == DurabilityPolicy.TRANSIENT_LOCAL


def test_class_table_json_reads_back_as_the_model_table():
    d = json.loads(class_table_json(CUSTOM8, '/models/m.pt'))
    assert ClassTable.from_dict(d) == CUSTOM8
    assert d['ids'] == list(range(8)) and d['model'] == '/models/m.pt'
    assert d['colors'][0] == [128, 64, 128] and d['names'][0] == 'road'


def test_label_info_class_map_is_the_class_table():
    from seg_perception import label_info

    assert label_info.class_map(CUSTOM8) == list(enumerate(CUSTOM8.names))
    try:
        import vision_msgs.msg  # noqa: F401
        importable = True
    except ImportError:
        importable = False
    assert label_info.available() == importable
    if not importable:
        with pytest.raises(RuntimeError, match='vision_msgs is not installed'):
            label_info.label_info_msg(CUSTOM8, Header())
    else:
        msg = label_info.label_info_msg(CUSTOM8, Header(frame_id='cam'))
        assert [c.class_name for c in msg.class_map] == list(CUSTOM8.names)
        assert msg.header.frame_id == 'cam' and msg.threshold == 0.0


@pytest.mark.parametrize('bad,counter', [(Frame(np.zeros((8, 8, 2), np.uint8), 'rgb8'),
                                          'dropped_failed'),
                                         (Frame(np.zeros((8, 8, 3), np.uint8), 'yuv9'),
                                          'dropped_malformed')])
def test_a_frame_that_breaks_the_batch_costs_only_itself(tiny_model_file, bad, counter):
    """The worker's batch step on a real node (in this process): the other frame is published."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from seg_perception.node import _Pending, SegmentationNode

    ctx = Context()
    rclpy.init(context=ctx, args=[])
    node = SegmentationNode(context=ctx, parameter_overrides=[
        Parameter('model', value=str(tiny_model_file)), Parameter('device', value='cpu'),
        Parameter('cameras', value=['front', 'rear']), Parameter('log_period', value=0.0)])
    probe = rclpy.create_node('batch_probe', context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(probe)
    got = []
    try:
        for cam in ('front', 'rear'):
            probe.create_subscription(Image, f'/{cam}/segmentation/labels', got.append,
                                      OUTPUT_QOS)
        front, rear = node._cameras
        deadline = time.monotonic() + 30.0
        while min(c.publishers['labels'].get_subscription_count() for c in (front, rear)) == 0:
            assert time.monotonic() < deadline, 'the node never saw the labels subscriber'
            executor.spin_once(timeout_sec=0.05)
        good = Frame(np.full((16, 24, 3), 80, np.uint8), 'rgb8')
        node._process([_Pending(Header(frame_id='front'), frame=bad),
                       _Pending(Header(frame_id='rear'), frame=good)], [front, rear])
        while not got:
            assert time.monotonic() < deadline, 'the rear frame was not published'
            executor.spin_once(timeout_sec=0.05)
        assert got[0].header.frame_id == 'rear' and (got[0].width, got[0].height) == (24, 16)
        executor.spin_once(timeout_sec=0.2)
        assert len(got) == 1  # nothing for the bad front frame
        now = time.monotonic()
        assert node.stats.camera_values(front.topic, now)[counter] == '1'
        assert node.stats.camera_values(rear.topic, now)['frames_processed'] == '1'
    finally:
        executor.shutdown()
        probe.destroy_node()
        node.close()
        ctx.try_shutdown()
