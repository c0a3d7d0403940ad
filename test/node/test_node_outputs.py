"""
segmentation_node's output settings on a real DDS graph: output_scale, overlay/compressed, timing.

One node process (tiny custom8 model, CPU, ``output_scale:=0.5``, ``stage_timing:=true``) serves
the module; the probe compares its outputs with the ROS-free pipeline.
"""

import cv2
import numpy as np
import pytest
from ros_probe import image_array, make_image, start_node
from sensor_msgs.msg import CompressedImage

from seg_perception.pipeline import Frame, Outputs
from seg_perception.ros_image import jpeg_overlay

W, H = 96, 64  # camera size; the tiny model's network input is 64x32
SCALE = 0.5
INPUT = '/image'
LABELS = '/segmentation/labels'
COLOR = '/segmentation/color'
OVERLAY = '/segmentation/overlay'
COMPRESSED = '/segmentation/overlay/compressed'
CAMERA_STATUS = f'camera {INPUT}'


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'diagnostics_period:=0.3',
                       f'output_scale:={SCALE}', 'jpeg_quality:=95', 'stage_timing:=true'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe)
    yield proc
    assert proc.stop() == 0, proc.log()


def test_color_and_overlay_at_output_scale_labels_at_camera_size(probe, node, reference):
    msg, pixels = make_image('bgr8', W, H, probe.stamp(), frame_id='scaled', seed=1)
    with probe.listening([LABELS, COLOR, OVERLAY]):
        got = probe.request([(INPUT, msg)], {t: msg.header.stamp
                                             for t in (LABELS, COLOR, OVERLAY)}, node)
    assert (got[LABELS].width, got[LABELS].height) == (W, H)
    for topic in (COLOR, OVERLAY):
        assert (got[topic].width, got[topic].height) == (W // 2, H // 2), topic
        assert got[topic].header.frame_id == 'scaled', topic
    assert got[OVERLAY].encoding == 'bgr8'
    want = reference([Frame(pixels, 'bgr8')], Outputs(), alpha=0.5, output_scale=SCALE)[0]
    np.testing.assert_array_equal(image_array(got[LABELS]), want.labels)
    np.testing.assert_array_equal(image_array(got[COLOR]), want.color)
    np.testing.assert_array_equal(image_array(got[OVERLAY]), want.overlay)
    # At half size the colours are every other pixel of the camera-size labels' colours.
    full = reference([Frame(pixels, 'bgr8')], Outputs(overlay=False), alpha=0.5)[0]
    np.testing.assert_array_equal(want.color, full.color[::2, ::2])


def test_compressed_overlay_is_jpeg_as_image_transport_writes_it(probe, node, reference):
    msg, pixels = make_image('rgba8', W, H, probe.stamp(), frame_id='jpeg', seed=2)
    with probe.listening([COMPRESSED], msg_type=CompressedImage):
        probe.wait_status(CAMERA_STATUS, lambda v: int(v['subscribers_overlay_compressed']) >= 1
                          and v['subscribers_overlay'] == '0',
                          'the node to see only an overlay/compressed subscriber', node)
        before = probe.status('pipeline')
        got = probe.request([(INPUT, msg)], {COMPRESSED: msg.header.stamp}, node)[COMPRESSED]
    assert got.header.frame_id == 'jpeg'
    assert got.format == 'rgba8; jpeg compressed bgr8'
    data = np.frombuffer(bytes(got.data), np.uint8)
    assert data[:3].tobytes() == b'\xff\xd8\xff'
    bgr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (H // 2, W // 2, 3)
    want = reference([Frame(pixels, 'rgba8')], Outputs(), alpha=0.5, output_scale=SCALE)[0]
    # The same JPEG as the pipeline's overlay encoded here, and close to that overlay.
    fmt, expected = jpeg_overlay(want.overlay, 'rgba8', 95)
    assert fmt == got.format
    np.testing.assert_array_equal(bgr, cv2.imdecode(expected, cv2.IMREAD_UNCHANGED))
    err = np.abs(bgr[..., ::-1].astype(np.int16) - want.overlay[..., :3].astype(np.int16))
    assert err.mean() < 20.0, err.mean()  # chroma subsampling on random pixels
    after = probe.wait_status('pipeline', lambda v: int(v['frames_processed'])
                              > int(before['frames_processed']), 'diagnostics of the frame',
                              node)
    assert int(after['computed_overlay']) > int(before['computed_overlay'])


def test_compressed_overlay_costs_nothing_without_subscribers(probe, node):
    with probe.listening([LABELS]):
        probe.wait_status(CAMERA_STATUS, lambda v: v['subscribers_overlay_compressed'] == '0'
                          and int(v['subscribers_labels']) >= 1,
                          'the node to see a labels subscriber only', node)
        before = probe.status('pipeline')
        msg, _ = make_image('rgb8', W, H, probe.stamp(), seed=3)
        probe.request([(INPUT, msg)], {LABELS: msg.header.stamp}, node)
        done = int(before['frames_processed']) + 1
        after = probe.wait_status('pipeline', lambda v: int(v['frames_processed']) >= done,
                                  'diagnostics counting the frame', node)
    assert after['computed_overlay'] == before['computed_overlay']


def test_diagnostics_say_the_label_upsampling_scale_and_stage_times(probe, node):
    msg, _ = make_image('rgb8', W, H, probe.stamp(), seed=4)
    with probe.listening([LABELS]):
        probe.request([(INPUT, msg)], {LABELS: msg.header.stamp}, node)
        values = probe.wait_status('pipeline', lambda v: 'stage_forward_p50_ms' in v,
                                   'stage times in /diagnostics', node)
    assert values['label_upsampling'] == 'bilinear_x2 (auto)'
    assert values['output_scale'] == '0.5'
    for stage in ('input', 'upload', 'resize', 'forward', 'labels', 'message', 'publish'):
        assert float(values[f'stage_{stage}_p50_ms']) >= 0.0, stage
    assert float(values['stage_forward_p50_ms']) > 0.0
