"""seg_perception/launch_support.py: topics, namespaces, parameters and checks for launch."""

import os
from pathlib import Path
import re

import pytest
import yaml

from seg_perception import launch_support as ls
from seg_perception import params as node_params

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_YAML = ROOT / 'config' / 'segment.yaml'
SEGMENT_RVIZ = ROOT / 'config' / 'segment.rviz'


def test_one_camera_runs_in_its_namespace_and_publishes_there():
    namespace, remappings, topics = ls.node_layout('/front/image_raw', [], 'image_raw')
    assert namespace == '/front'
    assert topics == ['/front/image_raw']
    assert remappings == [('image', '/front/image_raw'),
                          ('image/compressed', '/front/image_raw/compressed')]
    assert ls.output_topics('/front/image_raw')['overlay'] == '/front/segmentation/overlay'
    assert ls.output_topics('/image')['labels'] == '/segmentation/labels'


def test_several_cameras_share_one_node_in_the_root_namespace():
    cameras = ls.camera_list('front, rear')
    assert cameras == ['front', 'rear'] == ls.camera_list('[front, rear]')
    namespace, remappings, topics = ls.node_layout('/ignored/image', cameras, 'image_raw')
    assert namespace == ''
    assert topics == ['/front/image_raw', '/rear/image_raw']
    assert ('rear/image', '/rear/image_raw') in remappings
    assert ('front/image/compressed', '/front/image_raw/compressed') in remappings
    # the node publishes <camera>/segmentation/* from the root namespace: the same topics
    assert [ls.output_topics(t)['color'] for t in topics] == [
        '/front/segmentation/color', '/rear/segmentation/color']


@pytest.mark.parametrize('text', ['front,front', 'front,9rear', 'front,re ar'])
def test_bad_camera_lists_are_refused_by_name(text):
    with pytest.raises(ls.LaunchSetupError, match='cameras'):
        ls.camera_list(text)


def test_the_shipped_params_file_passes_without_its_empty_camera_list():
    params = ls.node_parameters(SEGMENT_YAML.read_text(), '/front')
    assert params['cameras'] == []  # what launch_ros refused as a parameter value
    args = ls.parameter_arguments(params)
    rules = dict(a.split(':=', 1) for a in args[1::2])
    assert set(args[0::2]) == {'-p'}
    assert 'cameras' not in rules
    # each value reads back (as rcl reads it: YAML) to the file's value and type
    for name, text in rules.items():
        value = yaml.safe_load(text)
        assert value == params[name] and type(value) is type(params[name]), name
    assert set(rules) == set(node_params.defaults()) - {'cameras'}


def test_parameters_of_namespaced_nodes_wildcards_and_lists():
    text = yaml.safe_dump({
        '/**': {'ros__parameters': {'depth': 3, 'nested': {'a': 1}}},
        'segmentation_node': {'ros__parameters': {'overlay_alpha': 0.3}},
        '/front/segmentation_node': {'ros__parameters': {'depth': 2}},
        'other_node': {'ros__parameters': {'depth': 9}},
    })
    params = ls.node_parameters(text, '/front')
    assert params == {'depth': 2, 'nested.a': 1, 'overlay_alpha': 0.3}
    assert ls.parameter_arguments({'cameras': ('front', 'rear'), 'model': ''}) == [
        '-p', 'cameras:=["front", "rear"]', '-p', 'model:=""']
    with pytest.raises(ls.LaunchSetupError, match='params_file'):
        ls.node_parameters('- a list\n')


def test_booleans_and_player_arguments_are_checked(tmp_path):
    assert ls.is_true('True', 'rviz') and not ls.is_true('', 'rviz')
    with pytest.raises(ls.LaunchSetupError, match='rviz'):
        ls.is_true('maybe', 'rviz')
    with pytest.raises(ls.LaunchSetupError, match='bag is required'):
        ls.player_command('', '1.0', '2.0', False)
    with pytest.raises(ls.LaunchSetupError, match='does not exist'):
        ls.player_command(str(tmp_path / 'missing'), '1.0', '2.0', False)
    with pytest.raises(ls.LaunchSetupError, match='rate'):
        ls.player_command(str(tmp_path), '0', '2.0', False)
    with pytest.raises(ls.LaunchSetupError, match='delay'):
        ls.player_command(str(tmp_path), '1', 'soon', False)
    assert ls.player_command(str(tmp_path), '0.5', '2', True) == [
        'ros2', 'bag', 'play', str(tmp_path), '--clock', '--rate', '0.5', '--delay', '2',
        '--loop']


def test_rviz_config_follows_the_namespace_convention():
    template = SEGMENT_RVIZ.read_text()
    shown = lambda text: {d['Name']: d['Topic']['Value']  # noqa: E731
                          for d in yaml.safe_load(text)['Visualization Manager']['Displays']}
    # the shipped file is what the launch files make for their default camera
    assert shown(template) == shown(ls.rviz_config(template, '/camera/image_raw', 'camera'))
    config = ls.rviz_config(template, '/rear/image_raw', 'rear_camera')
    assert shown(config) == {'Camera input': '/rear/image_raw',
                             'Segmentation overlay': '/rear/segmentation/overlay',
                             'Segmentation colour mask': '/rear/segmentation/color'}
    assert yaml.safe_load(config)['Visualization Manager']['Global Options'][
        'Fixed Frame'] == 'rear_camera'


def test_missing_rviz_is_a_clear_error_and_an_installed_one_is_found(tmp_path, monkeypatch):
    pytest.importorskip('ament_index_python')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path))
    with pytest.raises(ls.LaunchSetupError, match='rviz2 is not installed'):
        ls.find_rviz()
    (tmp_path / 'share' / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (tmp_path / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'rviz2').touch()
    with pytest.raises(ls.LaunchSetupError, match='missing'):
        ls.find_rviz()
    exe = tmp_path / 'lib' / 'rviz2' / 'rviz2'
    exe.parent.mkdir(parents=True)
    exe.write_text('#!/bin/sh\n')
    exe.chmod(0o755)
    assert ls.find_rviz() == str(exe)


def _metadata(folder: Path, profiles) -> None:
    folder.mkdir()
    topic = {'name': '/front/image_raw/compressed', 'type': 'sensor_msgs/msg/CompressedImage',
             'serialization_format': 'cdr', 'offered_qos_profiles': profiles}
    other = dict(topic, name='/tf', offered_qos_profiles=[{'reliability': 'best_effort'}])
    info = {'topics_with_message_count': [{'topic_metadata': topic, 'message_count': 3},
                                          {'topic_metadata': other, 'message_count': 3}]}
    (folder / 'metadata.yaml').write_text(yaml.safe_dump({'rosbag2_bagfile_information': info}))


def test_replay_subscribes_as_the_bag_was_recorded(tmp_path):
    _metadata(tmp_path / 'v9_best_effort', [{'reliability': 'best_effort', 'depth': 1}])
    _metadata(tmp_path / 'v8_best_effort', yaml.safe_dump([{'reliability': 2, 'depth': 1}]))
    _metadata(tmp_path / 'reliable', [{'reliability': 'reliable'}])
    _metadata(tmp_path / 'unknown', [])
    topics = ['/front/image_raw']
    assert ls.bag_reliability(str(tmp_path / 'v9_best_effort'), topics) == 'best_effort'
    assert ls.bag_reliability(str(tmp_path / 'v8_best_effort'), topics) == 'best_effort'
    assert ls.bag_reliability(str(tmp_path / 'reliable'), topics) == 'reliable'
    assert ls.bag_reliability(str(tmp_path / 'unknown'), topics) == 'reliable'
    assert ls.bag_reliability(str(tmp_path / 'no_bag.mcap'), topics) == 'reliable'


def test_the_ready_line_is_what_the_node_logs():
    source = (ROOT / 'seg_perception' / 'node.py').read_text()
    logged = re.search(r"f'segmenting \{([^}]*)\}", source)
    assert logged, 'node.py no longer logs the line the launch files wait for'
    assert ls.READY_PATTERN.search('[front.segmentation_node]: segmenting /front/image_raw '
                                   '(raw) with /m.pt on cpu')
    assert not ls.READY_PATTERN.search('[front.segmentation_node]: loading /m.pt')


def test_the_rviz_copy_is_a_private_temporary_file():
    path = ls.write_rviz_config('Panels: []\n')
    try:
        assert os.stat(path).st_mode & 0o077 == 0
        assert Path(path).read_text() == 'Panels: []\n'
    finally:
        os.remove(path)


def test_dds_environment_sets_the_profile_unless_the_user_did(tmp_path):
    profile = tmp_path / 'profile.xml'
    profile.write_text('<dds/>')
    env = ls.dds_environment(str(profile), {})
    assert env == {'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA',
                   'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}
    mine = {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/my.xml', 'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4'}
    assert ls.dds_environment(str(profile), mine) == {'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4'}
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in ls.dds_environment('', {})
    with pytest.raises(ls.LaunchSetupError, match='dds_profile: .*missing.xml does not exist'):
        ls.dds_environment(str(tmp_path / 'missing.xml'), {})
