"""launch/segment.launch.py: loads without ROS's launch packages and asks for what it should."""

import ast
from pathlib import Path

from file_module import load_file
import pytest

LAUNCH = Path(__file__).resolve().parents[2] / 'launch' / 'segment.launch.py'
ARGUMENTS = {'image', 'model', 'params_file', 'use_sim_time',  # the original four, and
             'cameras', 'image_name', 'input_transport', 'reliability', 'rviz', 'rviz_config',
             'camera_frame', 'dds_profile'}


def load():
    return load_file(LAUNCH)


def test_launch_file_imports_without_launch_installed():
    module = load()
    assert callable(module.generate_launch_description)


def test_launch_file_declares_its_arguments_and_the_node():
    tree = ast.parse(LAUNCH.read_text())
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.setdefault(node.func.id, []).append(node)
    declared = {c.args[0].value for c in calls['DeclareLaunchArgument']}
    assert declared == ARGUMENTS
    (node,) = calls['Node']
    kwargs = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(kwargs['package']) == 'seg_perception'
    assert ast.literal_eval(kwargs['executable']) == 'segmentation_node'
    # the Fast DDS settings come from launch_support.dds_environment (tested there)
    assert ast.unparse(kwargs['additional_env']) == 'dds'
    assert "dds = ls.dds_environment(arg('dds_profile'))" in LAUNCH.read_text()
    assert 'image' in ast.unparse(kwargs['remappings'])
    # the executable is the console script setup.py installs
    setup = (LAUNCH.parents[1] / 'setup.py').read_text()
    assert "'segmentation_node = seg_perception.node:main'" in setup


def test_launch_description_where_ros_launch_is_installed():
    pytest.importorskip('launch_ros', reason='ROS launch packages are not installed')
    from launch.actions import DeclareLaunchArgument

    ld = load().generate_launch_description()
    names = {e.name for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert names == ARGUMENTS
