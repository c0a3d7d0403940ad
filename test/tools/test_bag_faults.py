"""seg-bag on a topic without messages, and the leftovers of killed seg-bag runs."""

import os
from pathlib import Path
import time

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from seg_perception import bag
from seg_perception.pipeline import Outputs, SegmentationPipeline
from seg_perception.ros_types import BagError
from test_bag import _image, IMAGE, T0, TS, write_bag

STRING = 'std_msgs/msg/String'


def _drive_with_a_silent_camera(path: Path, storage: str = 'mcap') -> None:
    """Three frames of /front/image_raw, one /imu message, /silent/image_raw never published."""
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        front = writer.add_connection('/front/image_raw', IMAGE, typestore=TS)
        imu = writer.add_connection('/imu', STRING, typestore=TS)
        writer.add_connection('/silent/image_raw', IMAGE, typestore=TS)
        for i in range(3):
            t = T0 + i * 100_000_000
            writer.write(front, t, _image(t, 'front', 'rgb8', np.zeros((8, 16, 3), np.uint8)))
        writer.write(imu, T0, bytes(TS.serialize_cdr(TS.types[STRING](data='x'), STRING)))


def _args(model, inp, out, *topics):
    args = ['--model', str(model), '--input', str(inp), '--output', str(out), '--device', 'cpu',
            '--no-progress']
    for t in topics:
        args += ['--topic', t]
    return args


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('topics', [['/silent/image_raw'],
                                    ['/front/image_raw', '/silent/image_raw']])
def test_topic_without_messages_is_an_error_listing_the_others(tmp_path, tiny_model_file,
                                                               capsys, topics, storage):
    _drive_with_a_silent_camera(tmp_path / 'drive', storage)
    rc = bag.main(_args(tiny_model_file, tmp_path / 'drive', tmp_path / 'out', *topics))
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f'{tmp_path / "drive"}: no messages on /silent/image_raw; topics with messages: ' \
        '/front/image_raw (Image, 3), /imu (String, 1)' in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive']


def test_segmenter_refuses_to_finish_a_bag_without_frames(tmp_path, tiny_model_file):
    _drive_with_a_silent_camera(tmp_path / 'drive')
    pipeline = SegmentationPipeline.from_file(str(tiny_model_file), device='cpu', warmup=False)
    segmenter = bag.BagSegmenter(pipeline, Outputs(labels=True))
    with pytest.raises(BagError, match='no messages on /silent/image_raw'):
        segmenter.run(tmp_path / 'drive', tmp_path / 'out', ['/front/image_raw',
                                                             '/silent/image_raw'],
                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive']


def _killed_run_folder(parent: Path, name: str, age_s: float) -> Path:
    """Make what a seg-bag killed while writing ``name`` leaves: a folder with a part bag."""
    folder = parent / f'.{name}.incomplete-{"k1ll3d_0" if age_s else "busy_123"}'
    (folder / name).mkdir(parents=True)
    part = folder / name / f'{name}_0.mcap'
    part.write_bytes(b'\x89MCAP0\r\n' + b'\0' * 100)
    stamp = time.time() - age_s if age_s else time.time() + 60.0
    for p in (part, folder / name, folder):
        os.utime(p, (stamp, stamp))
    return folder


def test_next_successful_run_removes_incomplete_folders(tmp_path, tiny_model_file, capsys):
    write_bag(tmp_path / 'drive', 'sqlite3')
    killed = _killed_run_folder(tmp_path, 'out', age_s=3600.0)
    busy = _killed_run_folder(tmp_path, 'out', age_s=0.0)  # a run still writing
    other = _killed_run_folder(tmp_path, 'other', age_s=3600.0)  # another output's
    rc = bag.main(_args(tiny_model_file, tmp_path / 'drive', tmp_path / 'out',
                        '/front/image_raw'))
    assert rc == 0, capsys.readouterr().err
    assert not killed.exists()
    assert busy.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ['drive', 'out', busy.name, other.name])


def test_failed_run_keeps_earlier_leftovers_and_adds_none(tmp_path):
    killed = _killed_run_folder(tmp_path, 'out', age_s=3600.0)
    with pytest.raises(KeyboardInterrupt):
        with bag.AtomicBagWriter(tmp_path / 'out', 'mcap') as writer:
            conn = writer.add_connection('/x/segmentation/labels', IMAGE, typestore=TS)
            writer.write(conn, T0, _image(T0, 'x', 'mono8', np.zeros((2, 2, 1), np.uint8)))
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == [killed.name]
