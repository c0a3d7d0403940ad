"""
seg-bag and seg-replay with camera-driver encodings (yuv422, yuv422_yuy2, bayer_*8).

seg-bag segments such topics like rgb8 ones (overlay in rgb8); seg-replay plays a bag's frames
as recorded and can publish a folder of frames in these encodings.
"""

from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
import pytest
from ros_probe import image_array
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import Image

from seg_perception import bag, replay
from seg_perception.color_convert import from_rgb
from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_training.synth import render_frame

TS = get_typestore(Stores.ROS2_KILTED)
IMAGE = 'sensor_msgs/msg/Image'
SEG_REPLAY = str(Path(sys.executable).with_name('seg-replay'))
T0 = 1_700_000_000_000_000_000  # ns
W, H = 80, 40
# topic -> encoding of the recorded camera (row padding on the Bayer one)
CAMERAS = {'/front/image_raw': 'yuv422', '/left/image_raw': 'yuv422_yuy2',
           '/rear/image_raw': 'bayer_rggb8', '/right/image_raw': 'bayer_gbrg8'}
PAD = {'/rear/image_raw': 8}
FRAMES = 2


def _cdr(stamp: int, frame_id: str, encoding: str, raw: np.ndarray, pad: int = 0) -> bytes:
    h, w, c = raw.shape
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, :w * c] = raw.reshape(h, -1)
    time = TS.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9, nanosec=stamp % 10**9)
    header = TS.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)
    msg = TS.types[IMAGE](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                          step=w * c + pad, data=rows.reshape(-1))
    return bytes(TS.serialize_cdr(msg, IMAGE))


@pytest.fixture(scope='module')
def drive_bag(tmp_path_factory):
    """Write a bag of drive frames in each camera encoding; return its path and the raw frames."""
    path = tmp_path_factory.mktemp('enc') / 'drive'
    frames = {}
    with Writer(path, version=9) as writer:
        conns = {t: writer.add_connection(t, IMAGE, typestore=TS) for t in CAMERAS}
        for i in range(FRAMES):
            rgb = render_frame(11, (W, H), 'source', frame_index=i)[0]
            for k, (topic, encoding) in enumerate(CAMERAS.items()):
                raw = from_rgb(rgb, encoding)
                stamp = T0 + i * 100_000_000 + k
                writer.write(conns[topic], stamp,
                             _cdr(stamp, topic.split('/')[1], encoding, raw, PAD.get(topic, 0)))
                frames.setdefault(topic, []).append((stamp, raw))
    return path, frames


def test_seg_bag_segments_each_encoding_with_rgb8_overlay(drive_bag, tiny_model_file, tmp_path,
                                                          capsys):
    path, frames = drive_bag
    args = ['--model', str(tiny_model_file), '--input', str(path), '--output',
            str(tmp_path / 'out'), '--device', 'cpu', '--no-progress', '--batch-size', '3']
    for topic in CAMERAS:
        args += ['--topic', topic]
    assert bag.main(args) == 0, capsys.readouterr().err
    out = {}
    with Reader(tmp_path / 'out') as reader:
        for conn, _, data in reader.messages():
            out.setdefault(conn.topic, []).append(TS.deserialize_cdr(data, conn.msgtype))
    pipeline = SegmentationPipeline.from_file(str(tiny_model_file), device='cpu', warmup=False)
    for topic, encoding in CAMERAS.items():
        ns = topic.rsplit('/', 1)[0]
        labels, overlays = out[f'{ns}/segmentation/labels'], out[f'{ns}/segmentation/overlay']
        assert len(labels) == len(overlays) == FRAMES, topic
        for (stamp, raw), lab, ovl in zip(frames[topic], labels, overlays):
            for msg in (lab, ovl):
                assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
                assert msg.header.frame_id == ns[1:] and (msg.width, msg.height) == (W, H)
            assert ovl.encoding == 'rgb8' and ovl.step == W * 3, topic
            want = pipeline([Frame(raw, encoding)], Outputs(color=False))[0]
            np.testing.assert_array_equal(
                np.asarray(lab.data).reshape(H, W), want.labels, err_msg=topic)
            np.testing.assert_array_equal(
                np.asarray(ovl.data).reshape(H, W, 3), want.overlay, err_msg=topic)


def test_seg_replay_folder_in_camera_encodings(tmp_path, probe):
    rgbs = [render_frame(4, (W, H), 'source', frame_index=i)[0] for i in range(2)]
    for i, rgb in enumerate(rgbs):
        cv2.imwrite(str(tmp_path / f'frame_{i}.png'), rgb[:, :, ::-1])
    for encoding in ('yuv422', 'bayer_grbg8'):
        topic = f'/{encoding}/image_raw'
        with probe.listening([topic], Image):
            proc = subprocess.Popen(
                [SEG_REPLAY, str(tmp_path), '--topic', topic, '--fps', '20', '--encoding',
                 encoding, '--no-progress', '--wait-for-subscribers', '60'],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                probe.spin_until(lambda: len(probe.messages[topic]) == 2,
                                 f'2 {encoding} frames from seg-replay')
                _, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, err
            for rgb, msg in zip(rgbs, probe.messages[topic]):
                raw = from_rgb(rgb, encoding)
                assert msg.encoding == encoding and (msg.width, msg.height) == (W, H)
                assert msg.step == W * raw.shape[2]
                np.testing.assert_array_equal(image_array(msg).reshape(raw.shape), raw)


def test_seg_replay_refuses_encodings_it_cannot_make(tmp_path, drive_bag, capsys):
    cv2.imwrite(str(tmp_path / 'odd.png'), np.zeros((10, 15, 3), np.uint8))
    source = replay.FrameSource(tmp_path, '/cam', 10.0, 'cam', encoding='bayer_bggr8')
    with pytest.raises(ValueError, match='odd.png: bayer_bggr8 needs width a multiple of 2.*'
                       'width=15'):
        next(source.messages())
    with pytest.raises(ValueError, match='--encoding yuv422 needs --format raw, not jpeg'):
        replay.FrameSource(tmp_path, '/cam', 10.0, 'cam', fmt='jpeg', encoding='yuv422')
    path, _ = drive_bag
    assert replay.main([str(path), '--encoding', 'yuv422']) == 1
    assert '--encoding is for folders and videos' in capsys.readouterr().err
