"""
segmentation_node on a real DDS graph with camera-driver encodings: yuv422 and Bayer.

One node process (tiny custom8 model, CPU) serves the module; the frames are a seg-synth drive
frame converted to each encoding, so the overlay shows the converted picture.
"""

from typing import Tuple

import numpy as np
import pytest
from ros_probe import image_array, make_image, start_node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from seg_perception.color_convert import from_rgb, to_rgb_numpy
from seg_perception.image_codec import CONVERTED
from seg_perception.pipeline import Frame, Outputs
from seg_training.synth import render_frame

W, H = 96, 48  # camera size; the tiny model's network input is 64x32
INPUT = '/image'
OUTPUTS = {name: f'/segmentation/{name}' for name in ('labels', 'color', 'overlay')}
# (encoding, row padding in bytes): every converted encoding, some with padded rows
CASES = [('yuv422', 0), ('yuv422_yuy2', 4), ('bayer_rggb8', 0), ('bayer_bggr8', 0),
         ('bayer_gbrg8', 2), ('bayer_grbg8', 0)]


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'diagnostics_period:=0.3'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe)
    yield proc
    assert proc.stop() == 0, proc.log()


def raw_message(encoding: str, stamp, frame_id: str, pad: int) -> Tuple[Image, np.ndarray]:
    """Make a drive frame in ``encoding`` (rows padded by ``pad`` bytes) and its raw pixels."""
    raw = from_rgb(render_frame(5, (W, H), 'source')[0], encoding)  # (H, W, C)
    c = raw.shape[2]
    rows = np.zeros((H, W * c + pad), dtype=np.uint8)
    rows[:, :W * c] = raw.reshape(H, -1)
    return Image(header=Header(stamp=stamp, frame_id=frame_id), height=H, width=W,
                 encoding=encoding, step=W * c + pad, data=rows.tobytes()), raw


@pytest.mark.parametrize('encoding, pad', CASES)
def test_answers_with_rgb8_overlay_and_the_input_header(probe, node, reference, encoding, pad):
    frame_id = f'cam_{encoding}'
    msg, raw = raw_message(encoding, probe.stamp(), frame_id, pad)
    with probe.listening(list(OUTPUTS.values())):
        got = probe.request([(INPUT, msg)], {t: msg.header.stamp for t in OUTPUTS.values()},
                            node)
    for topic, out in got.items():
        assert out.header.frame_id == frame_id, topic
        assert out.header.stamp == msg.header.stamp, topic
        assert (out.width, out.height) == (W, H), topic
    assert got[OUTPUTS['overlay']].encoding == 'rgb8'
    assert got[OUTPUTS['labels']].encoding == 'mono8'
    want = reference([Frame(raw, encoding)], Outputs(), alpha=0.5)[0]
    np.testing.assert_array_equal(image_array(got[OUTPUTS['labels']]), want.labels)
    np.testing.assert_array_equal(image_array(got[OUTPUTS['color']]), want.color)
    overlay = image_array(got[OUTPUTS['overlay']])
    np.testing.assert_array_equal(overlay, want.overlay)
    # the overlay blends the converted picture: alpha 0.5 of it is within 1 of the RGB frame's half
    base = to_rgb_numpy(raw, encoding).astype(np.int64)
    colour = image_array(got[OUTPUTS['color']]).astype(np.int64)
    assert np.abs(2 * overlay.astype(np.int64) - base - colour).max() <= 1


def test_odd_width_yuv422_is_dropped_naming_the_width(probe, node):
    bad, _ = make_image('yuv422', W - 1, H, probe.stamp(), seed=1)
    probe.send_until_dropped(INPUT, bad, f'camera {INPUT}',
                             'the node to count the odd-width yuv422 frame as malformed', node)
    warning = f'{INPUT}: dropped malformed sensor_msgs/Image: width {W - 1} is odd; yuv422'
    probe.spin_until(lambda: warning in node.log(), f'the warning {warning!r}', process=node)
    good, _ = make_image('bayer_rggb8', W, H, probe.stamp(), seed=2)
    with probe.listening([OUTPUTS['overlay']]):
        answer = probe.request([(INPUT, good)], {OUTPUTS['overlay']: good.header.stamp}, node)
    assert answer[OUTPUTS['overlay']].encoding == 'rgb8'


def test_every_converted_encoding_is_covered():
    assert {encoding for encoding, _ in CASES} == set(CONVERTED)
