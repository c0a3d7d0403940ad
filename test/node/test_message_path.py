"""Outgoing messages serialized in one copy: the same messages as rclpy's own serialization."""

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_perception.image_codec import decode_compressed, ImageFormatError
from seg_perception.ros_image import (frame_from_serialized, image_msg, jpeg_overlay,
                                      serialized_compressed, serialized_image)


def header(frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1_700_000_123, 999_999_999
    return h


@pytest.mark.parametrize('frame_id', ['', 'a', 'ab', 'abc', 'camera_front'])
@pytest.mark.parametrize('encoding,shape', [('mono8', (5, 7)), ('rgb8', (3, 5, 3)),
                                            ('bgra8', (4, 3, 4)), ('32FC1', (2, 3))])
def test_serialized_image_is_the_image_message(frame_id, encoding, shape):
    rng = np.random.default_rng(len(frame_id))
    if encoding == '32FC1':
        image = rng.random(shape, dtype=np.float32)
    else:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
    data = serialized_image(header(frame_id), image, encoding)
    expected = image_msg(header(frame_id), image, encoding)
    assert deserialize_message(data, Image) == expected
    # Same length as rclpy's serialization (they differ only in the padding bytes' values).
    assert len(data) == len(serialize_message(expected))


@pytest.mark.parametrize('frame_id', ['', 'ab', 'front_camera'])
@pytest.mark.parametrize('encoding,pad', [('rgb8', 0), ('bgra8', 3), ('mono8', 5)])
def test_received_bytes_are_read_as_rclpy_reads_them(frame_id, encoding, pad):
    c = {'rgb8': 3, 'bgra8': 4, 'mono8': 1}[encoding]
    rng = np.random.default_rng(pad)
    pixels = rng.integers(0, 256, (3, 5, c), dtype=np.uint8)
    rows = np.zeros((3, 5 * c + pad), np.uint8)
    rows[:, :5 * c] = pixels.reshape(3, -1)
    msg = Image(header=header(frame_id), height=3, width=5, encoding=encoding,
                step=5 * c + pad, data=rows.tobytes())
    got_header, frame = frame_from_serialized(serialize_message(msg))
    assert got_header == msg.header and frame.encoding == encoding
    np.testing.assert_array_equal(frame.image, pixels)


def test_received_big_endian_bytes_and_bad_ones():
    # The same 1x1 mono8 image in big-endian CDR, written by hand.
    be = (b'\x00\x00\x00\x00' + (7).to_bytes(4, 'big') + (9).to_bytes(4, 'big')
          + (2).to_bytes(4, 'big') + b'a\x00' + b'\x00\x00' + (1).to_bytes(4, 'big') * 2
          + (6).to_bytes(4, 'big') + b'mono8\x00' + b'\x00' + b'\x00' + (1).to_bytes(4, 'big')
          + (1).to_bytes(4, 'big') + b'\x2a')
    h, frame = frame_from_serialized(be)
    assert (h.stamp.sec, h.stamp.nanosec, h.frame_id) == (7, 9, 'a')
    assert frame.image.shape == (1, 1, 1) and frame.image[0, 0, 0] == 42
    good = serialize_message(image_msg(header('x'), np.zeros((2, 2), np.uint8), 'mono8'))
    with pytest.raises(ImageFormatError, match='truncated'):
        frame_from_serialized(good[:-3])
    with pytest.raises(ImageFormatError, match='CDR'):
        frame_from_serialized(b'\x07\x07' + good[2:])
    bad = image_msg(header('x'), np.zeros((2, 2), np.uint8), 'mono8')
    bad.step = 3
    with pytest.raises(ImageFormatError, match='data has 4 bytes, step x height = 3 x 2'):
        frame_from_serialized(serialize_message(bad))


def test_serialized_image_packs_a_strided_array():
    big = np.random.default_rng(1).integers(0, 256, (6, 10, 4), dtype=np.uint8)
    view = big[1:5, 2:9, :3]  # not contiguous
    msg = deserialize_message(serialized_image(header('x'), view, 'rgb8'), Image)
    assert (msg.width, msg.height, msg.step) == (7, 4, 21)
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(4, 7, 3),
                                  view)


def test_serialized_image_rejects_wrong_dtypes():
    with pytest.raises(ImageFormatError, match='uint8'):
        serialized_image(header('x'), np.zeros((2, 2), np.float32), 'mono8')
    with pytest.raises(ImageFormatError, match='32FC1'):
        serialized_image(header('x'), np.zeros((2, 2), np.uint8), '32FC1')


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_jpeg_overlay_as_image_transport_and_back_through_the_node_decoder(encoding):
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 30, 10)
    rgb[:, 12:] = (10, 40, 220)
    image = rgb[..., ::-1] if encoding.startswith('bgr') else rgb
    if encoding.endswith('a8'):
        image = np.concatenate([image, np.full((16, 24, 1), 77, np.uint8)], axis=2)
    fmt, data = jpeg_overlay(np.ascontiguousarray(image), encoding, 95)
    assert fmt == f'{encoding}; jpeg compressed bgr8'
    msg = deserialize_message(serialized_compressed(header('cam'), fmt, data), CompressedImage)
    assert msg.format == fmt and msg.header == header('cam')
    decoded, decoded_encoding = decode_compressed(msg.format, msg.data)
    assert decoded_encoding == 'bgr8'
    err = np.abs(decoded[..., ::-1].astype(int) - rgb.astype(int))
    assert err[:, :8].max() <= 8 and err[:, 16:].max() <= 8  # away from the colour edge
    np.testing.assert_array_equal(decoded, cv2.imdecode(data, cv2.IMREAD_COLOR))


def test_jpeg_overlay_rejects_mono():
    with pytest.raises(ImageFormatError, match='mono8'):
        jpeg_overlay(np.zeros((4, 4), np.uint8), 'mono8', 80)
