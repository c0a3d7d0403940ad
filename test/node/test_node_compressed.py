"""
segmentation_node reading sensor_msgs/CompressedImage (jpeg, png) on image/compressed.

One node process (``input_transport:=compressed``, tiny custom8 model) serves the module.
"""

from pathlib import Path

from big_images import zero_png
import cv2
import numpy as np
import pytest
from ros_probe import image_array, make_image, start_node
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from seg_perception.image_codec import decode_compressed
from seg_perception.pipeline import Frame, Outputs

W, H = 72, 40
INPUT = '/image/compressed'
LABELS = '/segmentation/labels'
OVERLAY = '/segmentation/overlay'
CAMERA_STATUS = f'camera {INPUT}'


@pytest.fixture(scope='module')
def node(tiny_model_file, tmp_path_factory, probe):
    proc = start_node([f'model:={tiny_model_file}', 'device:=cpu', 'input_transport:=compressed',
                       'diagnostics_period:=0.3', 'log_period:=0.5'],
                      tmp_path_factory.mktemp('node') / 'segmentation_node.log', probe)
    yield proc
    assert proc.stop() == 0, proc.log()


def compressed(probe, fmt, ext, mono=False, seed=0):
    """Encode a smooth random picture as image_transport would; return the message."""
    _, pixels = make_image('mono8' if mono else 'bgr8', W // 8, H // 8, probe.stamp(), seed=seed)
    pixels = cv2.resize(pixels, (W, H), interpolation=cv2.INTER_LINEAR)  # jpeg-friendly
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return CompressedImage(header=Header(stamp=probe.stamp(), frame_id='cam'), format=fmt,
                           data=data.tobytes())


@pytest.mark.parametrize('fmt,ext,mono', [('rgb8; jpeg compressed bgr8', '.jpg', False),
                                          ('bgr8; png compressed bgr8', '.png', False),
                                          ('png', '.png', True)])
def test_compressed_frames_are_segmented(probe, node, reference, fmt, ext, mono):
    msg = compressed(probe, fmt, ext, mono, seed=len(fmt))
    with probe.listening([LABELS, OVERLAY]):
        got = probe.request([(INPUT, msg)], {t: msg.header.stamp for t in (LABELS, OVERLAY)},
                            node)
    image, encoding = decode_compressed(fmt, msg.data)
    assert encoding == ('mono8' if mono else 'bgr8')
    want = reference([Frame(image, encoding)], Outputs())[0]
    for m in got.values():
        assert (m.width, m.height) == (W, H) and m.header.frame_id == 'cam'
    assert got[OVERLAY].encoding == ('rgb8' if mono else 'bgr8')
    np.testing.assert_array_equal(image_array(got[LABELS]), want.labels)
    np.testing.assert_array_equal(image_array(got[OVERLAY]), want.overlay)


def _encoded(ext):
    ok, data = cv2.imencode(ext, np.full((H, W, 3), 120, np.uint8))
    assert ok
    return data.tobytes()


def _header_only_jpeg():
    """Return a jpeg cut after its frame header: the size reads, the decoding fails."""
    data = _encoded('.jpg')
    sof = data.index(b'\xff\xc0')
    return data[:sof + 2 + int.from_bytes(data[sof + 2:sof + 4], 'big')]


_HEADER_ONLY = f'{len(_header_only_jpeg())} bytes'


@pytest.mark.parametrize('fmt,data,problem', [
    ('jpeg', b'\xff\xd8\xff\xe0 truncated', 'does not decode as jpeg: no frame header'),
    ('jpeg', _header_only_jpeg(), f'data ({_HEADER_ONLY}) does not decode as jpeg'),  # worker
    ('h264', b'\x00\x00\x00\x01', "format 'h264' is neither jpeg nor png"),
    ('rgb8; jpeg compressed bgr8', _encoded('.bmp'), 'says jpeg but the data is bmp'),
    ('jpeg', _encoded('.tiff'), 'says jpeg but the data is tiff'),
    ('jpeg', _encoded('.webp'), 'says jpeg but the data is webp'),
    ('jpeg', b'\x00\x00' + _encoded('.jpg'), 'does not start with the jpeg signature'),
])
def test_undecodable_frame_is_dropped_and_the_next_one_answered(probe, node, fmt, data, problem):
    bad = CompressedImage(header=Header(stamp=probe.stamp()), format=fmt, data=data)
    with probe.listening([LABELS]):
        probe.send_until_dropped(INPUT, bad, CAMERA_STATUS,
                                 f'the {fmt} frame counted as malformed', node)
        good = compressed(probe, 'png', '.png', seed=3)
        answer = probe.request([(INPUT, good)], {LABELS: good.header.stamp}, node)[LABELS]
    assert (answer.width, answer.height) == (W, H)
    probe.spin_until(lambda: problem in node.log(), f'a warning with {problem!r}', process=node)


def _peak_rss_bytes(pid):
    status = Path(f'/proc/{pid}/status').read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith('VmHWM:'))
    return int(line.split()[1]) * 1024  # kB


def test_30000x30000_png_is_refused_from_its_header_and_the_next_frame_answered(probe, node):
    bomb = CompressedImage(header=Header(stamp=probe.stamp()), format='png',
                           data=zero_png(30000, 30000))
    assert len(bomb.data) < 1_000_000
    with probe.listening([LABELS]):
        probe.send_until_dropped(INPUT, bomb, CAMERA_STATUS,
                                 'the 30000x30000 png counted as malformed', node)
        good = compressed(probe, 'png', '.png', seed=4)
        answer = probe.request([(INPUT, good)], {LABELS: good.header.stamp}, node)[LABELS]
    assert (answer.width, answer.height) == (W, H)
    problem = 'png of 30000x30000 = 900000000 pixels is over max_input_pixels 16777216'
    probe.spin_until(lambda: problem in node.log(), f'a warning with {problem!r}', process=node)
    peak = _peak_rss_bytes(node.proc.pid)
    assert peak < 2 * 1024**3, f'peak RSS {peak / 1024**2:.0f} MB'


def test_statistics_are_logged_periodically(probe, node):
    line = f'[segmentation_node]: {INPUT}: '
    probe.spin_until(lambda: sum(line in ln and 'fps, latency p50' in ln
                                 for ln in node.log().splitlines()) >= 2,
                     'two statistics log lines', process=node)
    stats = [ln for ln in node.log().splitlines() if line in ln and 'overwritten' in ln]
    assert stats[-1].startswith('[INFO]') and 'malformed' in stats[-1]
