"""seg_perception/launch_support.py: topics, namespaces, parameters and checks for launch."""

import datetime
import os
from pathlib import Path
import re

import pytest
import yaml

from seg_perception import launch_support as ls
from seg_perception import params as node_params

ROOT = Path(__file__).resolve().parents[2]
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
    profile.write_text('<dds><profiles/></dds>')
    env = ls.dds_environment(str(profile), {})
    assert env == {'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA',
                   'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}
    mine = {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/my.xml', 'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4'}
    assert ls.dds_environment(str(profile), mine) == {'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4'}
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in ls.dds_environment('', {})
    with pytest.raises(ls.LaunchSetupError, match='dds_profile: .*missing.xml does not exist'):
        ls.dds_environment(str(tmp_path / 'missing.xml'), {})


# --- hostile launch arguments: each a LaunchSetupError naming the argument, on one line ----------

BAD_IMAGES = ['a b', '/front/../image', '~/image', '/front/{node}', '/9front/image',
              '/' + 'a' * 300, '/' + 'a' * 220 + '/image_raw']  # the last: outputs too long


@pytest.mark.parametrize('image', BAD_IMAGES, ids=range(len(BAD_IMAGES)))
def test_bad_image_topics_are_refused_by_rcl_rules(image):
    with pytest.raises(ls.LaunchSetupError, match='launch argument image') as e:
        ls.node_layout(image, [], 'image_raw')
    assert '\n' not in str(e.value) and 'valid ROS' in str(e.value)


BAD_CAMERAS = {'space': (['a b'], 'image_raw', 'cameras'),
               'dots': (['front/..'], 'image_raw', 'cameras'),
               'tilde': (['~front'], 'image_raw', 'cameras'),
               'long': (['c' * 300], 'image_raw', 'cameras'),
               'long topics': (['c' * 230], 'image_raw', 'cameras and image_name'),
               'empty name': (['front'], '', 'image_name is empty'),
               'name with space': (['front'], 'image raw', 'image_name'),
               'name up': (['front'], '../image', 'image_name'),
               'private name': (['front'], '~/image', 'image_name')}


@pytest.mark.parametrize('case', sorted(BAD_CAMERAS))
def test_bad_camera_and_image_names_are_refused_by_rcl_rules(case):
    cameras, image_name, argument = BAD_CAMERAS[case]
    with pytest.raises(ls.LaunchSetupError, match=argument) as e:
        ls.node_layout('/camera/image_raw', ls.checked_cameras(cameras, 'launch argument cameras'),
                       image_name)
    assert '\n' not in str(e.value)


def test_good_names_at_the_bounds_pass():
    # rcl: names up to 255 - 8; the node's longest is its parameter service in the namespace
    longest = 'c' * (247 - len(f'//{ls.NODE_NAME}/{ls.LONGEST_SERVICE}'))
    namespace, _, topics = ls.node_layout(f'/{longest}/image_raw', [], 'image_raw')
    assert namespace == '/' + longest
    with pytest.raises(ls.LaunchSetupError, match="the node's service '/c+/segmentation_node/"):
        ls.node_layout(f'/{longest}c/image_raw', [], 'image_raw')
    assert ls.node_layout('', ['front', 'robot/rear'], 'image_raw')[2] == [
        '/front/image_raw', '/robot/rear/image_raw']


def _params(text):
    return ls.node_parameters(text, '/front')


def test_a_camera_list_in_the_params_file_must_be_a_list_of_names():
    assert ls.params_cameras(_params(SEGMENT_YAML.read_text())) == []
    good = _params('segmentation_node:\n  ros__parameters:\n    cameras: [front, rear]\n')
    assert ls.params_cameras(good) == ['front', 'rear']
    for value, words in (('front', 'cameras is str'), ('3', 'cameras is int'),
                         ('[front, 3]', "3 is int, not a camera name"),
                         ('[front, "a b"]', 'not a valid ROS namespace'),
                         ('[front, front]', 'twice')):
        params = _params(f'segmentation_node:\n  ros__parameters:\n    cameras: {value}\n')
        with pytest.raises(ls.LaunchSetupError, match='params_file: cameras') as e:
            ls.params_cameras(params)
        assert words in str(e.value)


def alias_bomb(levels=9):
    """Return a YAML document of about 550 bytes that expands to 9**levels strings."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f'a{i}: &a{i} [{", ".join([f"*a{i - 1}"] * 9)}]')
    return '\n'.join(lines) + f'\nsegmentation_node:\n  ros__parameters:\n    model: *a{levels}\n'


def test_yaml_aliases_are_refused_before_they_expand():
    text = alias_bomb()
    assert len(text) < 600
    with pytest.raises(ls.LaunchSetupError, match='params_file: .*alias \\*a0 is not allowed'):
        _params(text)
    # anchors alone (no alias) are plain YAML
    assert _params('segmentation_node:\n  ros__parameters:\n    depth: &d 2\n') == {'depth': 2}


@pytest.mark.parametrize('text,words', [
    ('segmentation_node: [1, 2]\n', "'segmentation_node' is list, not a mapping"),
    ('segmentation_node:\n  ros__parameters: [1]\n',
     "'segmentation_node.ros__parameters' is list"),
    ("'/**': 3\n", "'/**' is int"),
    ('segmentation_node:\n  ros__parameters:\n    1: x\n', 'parameter name 1'),
    ('segmentation_node:\n  ros__parameters: {depth: [1\n', 'not a parameters YAML file'),
    ('just text\n', 'expected a mapping of node names, not str'),
], ids=range(6))
def test_structurally_wrong_params_files_are_refused_naming_the_entry(text, words):
    with pytest.raises(ls.LaunchSetupError, match='params_file') as e:
        _params(text)
    assert words in str(e.value)


def test_params_files_are_bounded_and_read_as_utf8(tmp_path):
    big = tmp_path / 'big.yaml'
    big.write_text('# ' + 'x' * (2 << 20) + '\n')
    latin = tmp_path / 'latin.yaml'
    latin.write_bytes('segmentation_node:\n  ros__parameters:\n    model: caf\xe9\n'
                      .encode('latin-1'))
    for path, words in ((big, 'more than the 1048576'), (latin, 'not UTF-8'),
                        (tmp_path / 'missing.yaml', 'cannot read'), (tmp_path, 'not a file')):
        with pytest.raises(ls.LaunchSetupError, match='launch argument params_file') as e:
            ls.read_params_file(str(path))
        assert words in str(e.value)
    assert ls.read_params_file(str(SEGMENT_YAML)) == SEGMENT_YAML.read_text()


@pytest.mark.parametrize('value', [datetime.date(2024, 1, 2), b'bytes', [1, 2.5], [[1]],
                                   ['a', 1], float('nan')], ids=range(6))
def test_parameter_values_rcl_cannot_take_are_refused_by_name(value):
    if isinstance(value, float):  # a number YAML writes as .nan: passed on, the node checks it
        assert ls.parameter_arguments({'overlay_alpha': value})
        return
    with pytest.raises(ls.LaunchSetupError, match='parameter odd: cannot pass'):
        ls.parameter_arguments({'odd': value})


def test_a_dds_profile_must_be_a_fast_dds_xml_profile(tmp_path):
    shipped = ROOT / 'config' / 'fastdds_large_images.xml'
    assert ls.dds_environment(str(shipped), {})['FASTDDS_DEFAULT_PROFILES_FILE'] == str(shipped)
    cases = {'text.xml': ('not xml at all', 'is not XML'),
             'html.xml': ('<html><body/></html>', 'root element is <html>'),
             'empty.xml': ('<dds xmlns="http://www.eprosima.com"/>', '<dds> holds no <profiles>'),
             'big.xml': ('<profiles>' + ' ' * (2 << 20) + '</profiles>', 'more than')}
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ls.LaunchSetupError, match='launch argument dds_profile') as e:
            ls.dds_environment(str(tmp_path / name), {})
        assert words in str(e.value), name
    (tmp_path / 'bare.xml').write_text('<profiles><participant profile_name="p"/></profiles>')
    assert ls.dds_environment(str(tmp_path / 'bare.xml'), {})
