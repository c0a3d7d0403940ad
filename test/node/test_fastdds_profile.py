"""
config/fastdds_large_images.xml: a valid Fast DDS profile that delivers large best-effort frames.

The delivery test runs bench/qos_large_images.py's camera and subscriber processes (rclpy, best
effort, depth 1) with the profile under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, where the ROS
middleware adds a shared-memory transport of the default size (512 KiB) and no 2048x1024 rgb8
frame arrives without the profile (README, "Large frames and best effort").
"""

from pathlib import Path
import xml.etree.ElementTree as ET

from file_module import load_file
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / 'config' / 'fastdds_large_images.xml'
SCRIPT = ROOT / 'bench' / 'qos_large_images.py'
NS = {'f': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
FRAME_BYTES = 2048 * 1024 * 3


def test_profile_is_the_default_participant_with_a_large_shared_memory_segment():
    root = ET.parse(PROFILE).getroot()
    descriptors = {d.findtext('f:transport_id', namespaces=NS): d
                   for d in root.iterfind('.//f:transport_descriptor', NS)}
    participants = root.findall('.//f:participant', NS)
    assert len(participants) == 1, 'one participant profile'
    participant = participants[0]
    assert participant.get('is_default_profile') == 'true'
    rtps = participant.find('f:rtps', NS)
    assert rtps.findtext('f:useBuiltinTransports', namespaces=NS) == 'false'
    used = [t.text for t in rtps.iterfind('f:userTransports/f:transport_id', NS)]
    assert used and all(t in descriptors for t in used), f'{used} vs {sorted(descriptors)}'
    kinds = [descriptors[t].findtext('f:type', namespaces=NS) for t in used]
    assert kinds[0] == 'SHM', 'shared memory first: it carries the frames on this machine'
    assert 'UDPv4' in kinds, 'UDPv4 for discovery and other machines'
    segment = int(descriptors[used[0]].findtext('f:segment_size', namespaces=NS))
    assert segment >= 4 * FRAME_BYTES, f'segment {segment} B holds fewer than 4 frames'


def test_setup_installs_the_profile():
    setup_py = (ROOT / 'setup.py').read_text()
    assert "glob('config/*.xml')" in setup_py


@pytest.fixture(scope='module')
def bench():
    return load_file(SCRIPT)


def test_profile_delivers_large_best_effort_frames_between_processes(bench, tmp_path):
    args = bench.build_parser().parse_args(['--frames', '10', '--size', '2048x1024'])
    env = {'FASTDDS_DEFAULT_PROFILES_FILE': str(PROFILE),
           'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    result = bench.measure('profile', env, args)
    assert result['sent'] == 10, result
    assert 'subscriber_error' not in result, result
    assert not [m for m in result.get('messages', []) if 'rror' in m], result
    # all 10 arrive on an idle machine; a loaded one may starve the subscriber of a few
    assert result['received'] >= 5, result
