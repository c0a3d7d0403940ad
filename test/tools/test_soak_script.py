"""bench/soak.py: the malformed frames it sends are malformed for the node, its RSS reading."""

import os
from pathlib import Path

from file_module import load_file
import pytest
from std_msgs.msg import Header

from seg_perception import ros_image
from seg_perception.image_codec import ImageFormatError

SCRIPT = Path(__file__).resolve().parents[2] / 'bench' / 'soak.py'


@pytest.fixture(scope='module')
def soak():
    return load_file(SCRIPT)


@pytest.mark.parametrize('kind', range(4))
def test_every_malformed_kind_is_refused_by_the_node_checks(soak, kind):
    msg = soak.malformed_image(Header(frame_id='front'), 512, 256, kind)
    with pytest.raises(ImageFormatError):
        ros_image.frame_from_image(msg)


def test_malformed_kinds_differ(soak):
    kinds = {(m.encoding, m.width, m.height, m.step, len(m.data))
             for m in (soak.malformed_image(Header(), 64, 32, k) for k in range(4))}
    assert len(kinds) == 4


def test_rss_of_this_process(soak):
    rss = soak.rss_bytes(os.getpid())
    assert 10 * 2**20 < rss < 64 * 2**30


def test_node_params_name_two_cameras_and_a_queue_for_malformed_frames(soak):
    args = soak.build_parser().parse_args(['--duration', '20'])
    params = soak.node_params(args)
    assert 'cameras:=[front, rear]' in params
    assert f'depth:={soak.INPUT_DEPTH}' in params and soak.INPUT_DEPTH > 1
    assert args.size == (512, 256) and args.reliability == 'reliable'
