"""seg-bag end to end: bags written by the rosbags library in, segmentation bags out."""

from pathlib import Path
import subprocess
import sys

from big_images import zero_png
import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from seg_perception import bag
from seg_perception.pipeline import class_table_json, Frame, Outputs, SegmentationPipeline
from seg_perception.ros_types import BagError, camera_namespace

TS = get_typestore(Stores.ROS2_KILTED)
IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
SEG_BAG = str(Path(sys.executable).with_name('seg-bag'))
T0 = 1_700_000_000_000_000_000  # ns
# (topic, encoding, width, height, frame_id); the compressed camera alternates jpeg and png.
RAW_CAMERAS = [('/front/image_raw', 'rgb8', 40, 24, 'front_cam'),
               ('/rear/image_raw', 'bgr8', 24, 16, 'rear_cam')]
COMPRESSED_CAMERA = ('/side/image_raw/compressed', 32, 20, 'side_cam')
FRAMES = 3


def _header(stamp: int, frame_id: str):
    time = TS.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9, nanosec=stamp % 10**9)
    return TS.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)


def _image(stamp, frame_id, encoding, pixels, height=None, width=None, step=None):
    h, w = pixels.shape[:2]
    msg = TS.types[IMAGE](header=_header(stamp, frame_id), height=h if height is None else height,
                          width=w if width is None else width, encoding=encoding, is_bigendian=0,
                          step=pixels[0].size if step is None else step, data=pixels.reshape(-1))
    return bytes(TS.serialize_cdr(msg, IMAGE))


def _compressed(stamp, frame_id, fmt, data):
    msg = TS.types[COMPRESSED](header=_header(stamp, frame_id), format=fmt,
                               data=np.frombuffer(data, np.uint8))
    return bytes(TS.serialize_cdr(msg, COMPRESSED))


def write_bag(path: Path, storage: str, bad=None):
    """
    Write the test drive with rosbags; returns {topic: [(bag time, header stamp, frame, enc)]}.

    ``bad`` = (topic, frame index, raw CDR bytes) replaces one message with a malformed one.
    """
    rng = np.random.default_rng(7)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    expected = {}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, IMAGE, typestore=TS) for t, *_ in RAW_CAMERAS}
        side = COMPRESSED_CAMERA[0]
        conns[side] = writer.add_connection(side, COMPRESSED, typestore=TS)
        conns['/imu'] = writer.add_connection('/imu', 'std_msgs/msg/String', typestore=TS)
        for i in range(FRAMES):
            for k, (topic, enc, w, h, frame_id) in enumerate(RAW_CAMERAS):
                stamp = T0 + i * 100_000_000 + k * 1_000_000
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                data = _image(stamp, frame_id, enc, pixels)
                if bad and bad[0] == topic and bad[1] == i:
                    data = bad[2](stamp)
                writer.write(conns[topic], stamp + 3_000_000, data)  # recorded 3 ms later
                expected.setdefault(topic, []).append((stamp + 3_000_000, stamp, pixels, enc))
            if i < 2:  # one jpeg and one png frame
                topic, w, h, frame_id = COMPRESSED_CAMERA
                stamp = T0 + i * 100_000_000 + 5_000_000
                pixels = np.zeros((h, w, 3), np.uint8)
                pixels[:, : w // 2] = (200, 30, 10)
                pixels[h // 2:] += rng.integers(0, 40, (h - h // 2, w, 3), dtype=np.uint8)
                ext, fmt = ('.jpg', 'rgb8; jpeg compressed bgr8') if i == 0 else (
                    '.png', 'rgb8; png compressed bgr8')
                ok, buf = cv2.imencode(ext, pixels)
                assert ok
                writer.write(conns[topic], stamp + 3_000_000,
                             _compressed(stamp, frame_id, fmt, buf.tobytes()))
                decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # what a subscriber sees
                expected.setdefault(topic, []).append((stamp + 3_000_000, stamp, decoded, 'bgr8'))
            writer.write(conns['/imu'], T0 + i * 100_000_000,
                         bytes(TS.serialize_cdr(TS.types['std_msgs/msg/String'](data='x'),
                                                'std_msgs/msg/String')))
    return expected


def read_bag(path: Path):
    """{topic: [(bag time, message)]} and the bag's storage format and custom data."""
    out = {}
    with Reader(path) as reader:
        for conn, t, data in reader.messages():
            out.setdefault(conn.topic, []).append((t, TS.deserialize_cdr(data, conn.msgtype),
                                                   data))
        fmt = 'mcap' if any(p.suffix == '.mcap' for p in Path(path).iterdir()) else 'sqlite3'
        custom = reader.storage.metadata.custom or {}
    return out, fmt, custom


def pixels_of(msg) -> np.ndarray:
    c = {'mono8': 1, 'rgb8': 3, 'bgr8': 3}[msg.encoding]
    return np.asarray(msg.data).reshape(msg.height, msg.step)[:, :msg.width * c].reshape(
        msg.height, msg.width, c)


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def seg_bag_args(model, inp, out, *extra):
    topics = [t for t, *_ in RAW_CAMERAS] + [COMPRESSED_CAMERA[0]]
    args = ['--model', str(model), '--input', str(inp), '--output', str(out), '--device', 'cpu',
            '--no-progress']
    for t in topics:
        args += ['--topic', t]
    return args + list(extra)


@pytest.fixture(scope='module')
def pipeline(tiny_model_file):
    return SegmentationPipeline.from_file(str(tiny_model_file), device='cpu', warmup=False)


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def segmented(request, tmp_path_factory, tiny_model_file):
    """Run the seg-bag console script on a bag of each storage format."""
    storage = request.param
    root = tmp_path_factory.mktemp(f'bag_{storage}')
    expected = write_bag(root / 'drive', storage)
    extra = (['--include-inputs', '--batch-size', '4'] if storage == 'mcap' else
             ['--outputs', 'labels,confidence', '--batch-size', '2'])
    proc = subprocess.run([SEG_BAG] + seg_bag_args(tiny_model_file, root / 'drive',
                                                   root / 'out') + extra,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return storage, root, expected, proc


def test_one_labels_message_per_frame_with_input_stamps(segmented, pipeline, tiny_model_file):
    storage, root, expected, proc = segmented
    out, fmt, custom = read_bag(root / 'out')
    assert fmt == storage  # output storage follows the input
    for topic, frames in expected.items():
        ns = camera_namespace(topic, COMPRESSED if topic.endswith('compressed') else IMAGE)
        labels = out[f'{ns}/segmentation/labels']
        assert len(labels) == len(frames)
        for (t_bag, stamp, pixels, enc), (t_out, msg, _) in zip(frames, labels):
            assert t_out == t_bag
            assert stamp_of(msg) == stamp
            assert msg.header.frame_id == {c[0]: c[4] for c in RAW_CAMERAS}.get(
                topic, COMPRESSED_CAMERA[3])
            assert msg.encoding == 'mono8'
            assert (msg.height, msg.width) == pixels.shape[:2]
            want = pipeline([Frame(pixels, enc)], Outputs(labels=True, color=False, overlay=False))
            np.testing.assert_array_equal(pixels_of(msg)[..., 0], want[0].labels)
    # The class table as the node publishes it: once per camera, and in the bag's metadata.
    table = class_table_json(pipeline.info.classes, str(tiny_model_file))
    assert custom['seg_perception.class_table'] == table
    for ns in ('/front', '/rear', '/side'):
        (t, msg, _), = out[f'{ns}/segmentation/class_table']
        assert msg.data == table and t == min(t for t, *_ in out[f'{ns}/segmentation/labels'])
    assert 'frames/s' in proc.stdout and 'real time' in proc.stdout
    assert sorted(p.name for p in root.iterdir()) == ['drive', 'out']  # no leftovers


def test_outputs_as_asked(segmented, pipeline):
    storage, root, expected, _ = segmented
    out, _, _ = read_bag(root / 'out')
    palette = pipeline.info.classes.palette()
    if storage == 'mcap':  # default outputs plus the inputs, byte for byte
        assert set(out) == {f'/{n}/segmentation/{o}' for n in ('front', 'rear', 'side')
                            for o in ('labels', 'color', 'overlay', 'class_table')} | set(expected)
        with Reader(root / 'drive') as reader:
            for conn, t, data in reader.messages():
                if conn.topic in expected:
                    assert (t, data) in [(t2, d2) for t2, _, d2 in out[conn.topic]]
        for topic, ns in (('/front/image_raw', '/front'), ('/rear/image_raw', '/rear')):
            for (_, lab, _), (_, col, _), (_, ovl, _) in zip(
                    out[f'{ns}/segmentation/labels'], out[f'{ns}/segmentation/color'],
                    out[f'{ns}/segmentation/overlay']):
                assert col.encoding == 'rgb8'
                np.testing.assert_array_equal(pixels_of(col), palette[pixels_of(lab)[..., 0]])
                assert ovl.encoding == dict((c[0], c[1]) for c in RAW_CAMERAS)[topic]
                assert stamp_of(ovl) == stamp_of(lab)
    else:
        assert set(out) == {f'/{n}/segmentation/{o}' for n in ('front', 'rear', 'side')
                            for o in ('labels', 'confidence', 'class_table')}
        for _, msg, _ in out['/front/segmentation/confidence']:
            conf = pixels_of(msg)
            assert msg.encoding == 'mono8' and conf.shape[:2] == (24, 40)
            # The winning class of 8 has at least 1/8 of the probability mass.
            assert conf.min() >= int(255 / 8) and conf.max() <= 255


def _run_in_process(capsys, model, inp, out, *extra):
    rc = bag.main(seg_bag_args(model, inp, out, *extra))
    return rc, capsys.readouterr().err


def test_missing_topic_lists_image_topics(tmp_path, tiny_model_file, capsys):
    write_bag(tmp_path / 'drive', 'mcap')
    rc = bag.main(['--model', str(tiny_model_file), '--input', str(tmp_path / 'drive'),
                   '--output', str(tmp_path / 'out'), '--topic', '/left/image_raw'])
    err = capsys.readouterr().err
    assert rc == 1
    assert '/left/image_raw is not in the bag' in err
    assert '/front/image_raw (Image)' in err and '(CompressedImage)' in err
    assert not (tmp_path / 'out').exists()
    rc = bag.main(['--model', str(tiny_model_file), '--input', str(tmp_path / 'drive'),
                   '--output', str(tmp_path / 'out'), '--topic', '/imu'])
    assert rc == 1 and 'std_msgs/msg/String, not an image' in capsys.readouterr().err


@pytest.mark.parametrize('damage', ['truncated_mcap', 'garbled_sqlite3', 'no_metadata'])
def test_corrupt_bag_is_a_clear_error(tmp_path, tiny_model_file, capsys, damage):
    storage = 'sqlite3' if 'sqlite3' in damage else 'mcap'
    write_bag(tmp_path / 'drive', storage)
    if damage == 'no_metadata':
        (tmp_path / 'drive' / 'metadata.yaml').unlink()
    else:
        (f,) = [p for p in (tmp_path / 'drive').iterdir() if p.suffix in ('.mcap', '.db3')]
        data = bytearray(f.read_bytes())
        if damage == 'truncated_mcap':
            data = data[: len(data) * 2 // 3]  # recording cut short
        else:
            data[len(data) // 3: len(data) // 3 + 4096] = b'\xa5' * 4096
        f.write_bytes(bytes(data))
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out')
    assert rc == 1
    assert str(tmp_path / 'drive') in err and 'not a readable rosbag2 bag' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive']


def _short_data(stamp):
    return _image(stamp, 'front_cam', 'rgb8', np.zeros((24, 40, 3), np.uint8), height=30)


def _unknown_encoding(stamp):
    return _image(stamp, 'front_cam', '16UC1', np.zeros((24, 40, 2), np.uint8))


def _truncated_message(stamp):
    return _image(stamp, 'front_cam', 'rgb8', np.zeros((24, 40, 3), np.uint8))[:60]


@pytest.mark.parametrize('make_bad,words', [
    (_short_data, 'step x height'), (_unknown_encoding, "unsupported encoding '16UC1'"),
    (_truncated_message, 'cannot be deserialised')])
def test_malformed_image_names_topic_and_time(tmp_path, tiny_model_file, capsys, make_bad,
                                              words):
    write_bag(tmp_path / 'drive', 'mcap', bad=('/front/image_raw', 1, make_bad))
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out',
                              '--batch-size', '1')  # frames before the bad one are written
    assert rc == 1
    bad_time = T0 + 100_000_000 + 3_000_000
    assert f'/front/image_raw at {bad_time // 10**9}.{bad_time % 10**9:09d}' in err
    assert words in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive']  # no output, no leftovers


def test_corrupt_compressed_frame(tmp_path, tiny_model_file, capsys):
    write_bag(tmp_path / 'drive', 'sqlite3')
    with Writer(tmp_path / 'bad', version=9) as writer:
        conn = writer.add_connection('/cam/image/compressed', COMPRESSED, typestore=TS)
        writer.write(conn, T0, _compressed(T0, 'cam', 'jpeg', b'\xff\xd8\xff' + b'\0' * 50))
    rc = bag.main(['--model', str(tiny_model_file), '--input', str(tmp_path / 'bad'),
                   '--output', str(tmp_path / 'out'), '--topic', '/cam/image/compressed',
                   '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 1 and '/cam/image/compressed at 1700000000.000000000' in err
    assert 'does not decode as jpeg' in err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('fmt,data,words', [
    ('png', zero_png(30000, 30000),
     'png of 30000x30000 = 900000000 pixels is over max_input_pixels 16777216'),
    ('jpeg', cv2.imencode('.bmp', np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
     "format 'jpeg' says jpeg but the data is bmp")])
def test_oversized_or_mislabelled_compressed_frame(tmp_path, tiny_model_file, capsys, fmt,
                                                   data, words):
    with Writer(tmp_path / 'bad', version=9) as writer:
        conn = writer.add_connection('/cam/image/compressed', COMPRESSED, typestore=TS)
        writer.write(conn, T0, _compressed(T0, 'cam', fmt, data))
    rc = bag.main(['--model', str(tiny_model_file), '--input', str(tmp_path / 'bad'),
                   '--output', str(tmp_path / 'out'), '--topic', '/cam/image/compressed',
                   '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 1 and '/cam/image/compressed at 1700000000.000000000' in err
    assert words in err
    assert not (tmp_path / 'out').exists()


def test_max_input_pixels_option(tmp_path, tiny_model_file, capsys):
    write_bag(tmp_path / 'drive', 'mcap')
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out',
                              '--max-input-pixels', str(24 * 16))  # the rear camera's size
    assert rc == 1
    assert '/front/image_raw at ' in err and 'image of 40x24 = 960 pixels is over ' \
        'max_input_pixels 384' in err


def test_refuses_to_overwrite_unless_asked(tmp_path, tiny_model_file, capsys, caplog):
    write_bag(tmp_path / 'drive', 'sqlite3')
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out')
    assert rc == 0, err
    earlier = sorted(p.name for p in (tmp_path / 'out').iterdir())
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out')
    assert rc == 1 and '--overwrite' in err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == earlier
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out',
                              '--overwrite', '--outputs', 'labels', '--storage', 'mcap')
    assert rc == 0, err
    assert f'--overwrite: the rosbag2 bag {tmp_path / "out"} (' in caplog.text
    assert ' MiB in 2 files) will be replaced once the new bag is complete' in caplog.text
    out, fmt, _ = read_bag(tmp_path / 'out')
    assert fmt == 'mcap'
    assert set(out) == {f'/{n}/segmentation/{o}' for n in ('front', 'rear', 'side')
                        for o in ('labels', 'class_table')}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive', 'out']


def test_atomic_writer_never_leaves_a_finished_looking_bag(tmp_path):
    target = tmp_path / 'out'
    with pytest.raises(KeyboardInterrupt):
        with bag.AtomicBagWriter(target, 'mcap') as writer:
            conn = writer.add_connection('/x/segmentation/labels', IMAGE, typestore=TS)
            writer.write(conn, T0, _image(T0, 'x', 'mono8', np.zeros((2, 2, 1), np.uint8)))
            assert not target.exists()
            (partial,) = [p for p in tmp_path.iterdir()]
            assert partial.name.startswith('.out.incomplete-')
            assert not list(partial.rglob('metadata.yaml'))  # no reader takes it for a bag
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_camera_namespaces():
    assert camera_namespace('/front/image_raw') == '/front'
    assert camera_namespace('/car/front/image_rect') == '/car/front'
    assert camera_namespace('/front/image_raw/compressed', COMPRESSED) == '/front'
    assert camera_namespace('/image_raw') == ''
    assert camera_namespace('/compressed', COMPRESSED) == ''


def test_two_topics_of_one_namespace_are_refused():
    class Conn:
        def __init__(self, topic, msgtype=IMAGE):
            self.topic, self.msgtype = topic, msgtype

    with pytest.raises(BagError, match='/cam/image_raw and /cam/image_raw/compressed'):
        bag.output_namespaces([Conn('/cam/image_raw'),
                               Conn('/cam/image_raw/compressed', COMPRESSED)])
    assert bag.output_namespaces([Conn('/a/image'), Conn('/b/image')]) == {
        '/a/image': '/a', '/b/image': '/b'}


def test_unknown_output_name_is_rejected(capsys):
    with pytest.raises(SystemExit):
        bag.main(['--model', 'm.pt', '--input', 'x', '--output', 'y', '--topic', '/a',
                  '--outputs', 'labels,depth'])
    assert "unknown outputs ['depth']" in capsys.readouterr().err


def test_copy_of_input_is_refused(tmp_path, tiny_model_file, capsys):
    write_bag(tmp_path / 'drive', 'mcap')
    rc = bag.main(['--model', str(tiny_model_file), '--input', str(tmp_path / 'drive'),
                   '--output', str(tmp_path / 'drive'), '--topic', '/front/image_raw',
                   '--overwrite'])
    assert rc == 1 and 'output is the input bag' in capsys.readouterr().err


def test_engine_that_cannot_run_is_a_clear_error(tmp_path, tiny_model_file, capsys):
    write_bag(tmp_path / 'drive', 'mcap')
    rc, err = _run_in_process(capsys, tiny_model_file, tmp_path / 'drive', tmp_path / 'out',
                              '--accelerate', 'cuda_graphs')
    assert rc == 1 and 'accelerate cuda_graphs needs a CUDA device' in err
    assert not (tmp_path / 'out').exists()
