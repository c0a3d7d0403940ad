"""
Play a recorded drive into segmentation_node on simulated time, optionally with RViz.

    ros2 launch seg_perception replay.launch.py bag:=/data/drive image:=/front/image_raw
    ros2 launch seg_perception replay.launch.py bag:=/data/drive image:=/front/image_raw rviz:=true
    ros2 launch seg_perception replay.launch.py bag:=/data/drive cameras:=front,rear rate:=0.5

``ros2 bag play --clock`` publishes the bag and ``/clock``; the node runs with
``use_sim_time:=true``, so its header stamps and diagnostics follow the bag's time.

Arguments: ``bag`` (rosbag2 folder or file), ``rate`` (playback speed factor), ``loop``,
``delay`` (seconds before playback starts, so the node has loaded its model), ``image`` (camera
topic in the bag; the node runs in that topic's namespace, so ``/front/image_raw`` gives
``/front/segmentation/*``), ``cameras`` (comma list, e.g. ``front,rear``: one node for all, reading
``/<camera>/<image_name>``), ``image_name``, ``input_transport`` (raw | compressed: the node reads
``<image>/compressed``), ``model``, ``params_file``, ``rviz`` (true: RViz with
config/segment.rviz, its topics and fixed frame set for the (first) camera), ``rviz_config``,
``camera_frame`` (RViz fixed frame; default the camera's name).

The launch imports live inside the functions so the file also loads where ``launch`` is missing.
"""

import os
import tempfile
from typing import List, Sequence

import yaml

TRUE = ('true', '1', 'yes', 'on')
# Display names in config/segment.rviz -> topic under the camera namespace ('' = the input).
RVIZ_TOPICS = {'Camera input': '', 'Segmentation overlay': 'segmentation/overlay',
               'Segmentation colour mask': 'segmentation/color'}


def camera_namespace(topic: str) -> str:
    """Return the namespace of a camera topic: '/front/image_raw' -> '/front', '/image' -> ''."""
    return '/'.join(('/' + topic.strip('/')).split('/')[:-1])


def camera_topics(image: str, cameras: Sequence[str], image_name: str) -> List[str]:
    """Return the input topic of each camera: ``image`` alone, or ``/<camera>/<image_name>``."""
    if cameras:
        return [f'/{c.strip("/")}/{image_name}' for c in cameras]
    return ['/' + image.strip('/')]


def rviz_config(text: str, image: str, frame: str) -> str:
    """Point config/segment.rviz's displays at the camera ``image`` and fix ``frame``."""
    config = yaml.safe_load(text)
    manager = config['Visualization Manager']
    ns = camera_namespace(image)
    for display in manager['Displays']:
        suffix = RVIZ_TOPICS.get(display.get('Name'))
        if suffix is not None:
            display['Topic']['Value'] = f'{ns}/{suffix}' if suffix else image
    manager['Global Options']['Fixed Frame'] = frame
    return yaml.safe_dump(config, sort_keys=False)


def node_parameters(text: str, node: str = 'segmentation_node') -> dict:
    """
    Return the ``ros__parameters`` of ``node`` (or of ``/**``) in a parameters YAML file.

    Passed as a dict they apply whatever namespace the node runs in, while a file's
    ``segmentation_node:`` key only matches the node in the root namespace.
    """
    data = yaml.safe_load(text) or {}
    params = {}
    for key in ('/**', node, '/' + node):
        params.update((data.get(key) or {}).get('ros__parameters') or {})
    return params


def generate_launch_description():
    """Declare the arguments; the actions are built once their values are known."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    share = get_package_share_directory('seg_perception')
    args = [
        ('bag', None, 'rosbag2 to play (folder, .mcap or .db3)'),
        ('rate', '1.0', 'playback speed factor'),
        ('loop', 'false', 'play the bag again and again'),
        ('delay', '5.0', 's to wait before playback (model loading)'),
        ('image', '/camera/image_raw', 'camera topic in the bag (single camera)'),
        ('cameras', '', 'comma list of cameras, e.g. front,rear (one node for all)'),
        ('image_name', 'image_raw', 'image topic name under each camera namespace'),
        ('input_transport', '', 'raw | compressed (empty: as in params_file)'),
        ('model', '', 'model file (.pt); empty: params file or bundled'),
        ('params_file', os.path.join(share, 'config', 'segment.yaml'), 'node parameters'),
        ('rviz', 'false', 'start RViz with the segmentation view'),
        ('rviz_config', os.path.join(share, 'config', 'segment.rviz'), 'RViz config template'),
        ('camera_frame', '', "RViz fixed frame; empty: the camera's name"),
    ]
    declared = [DeclareLaunchArgument(name, description=desc, **(
        {} if default is None else {'default_value': default})) for name, default, desc in args]
    return LaunchDescription(declared + [OpaqueFunction(function=_actions)])


def _actions(context):
    """Build bag playback, the node and RViz from the resolved arguments."""
    from launch.actions import EmitEvent, ExecuteProcess, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    cameras = [c.strip() for c in arg('cameras').split(',') if c.strip()]
    topics = camera_topics(arg('image'), cameras, arg('image_name'))
    loop = arg('loop').lower() in TRUE
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', arg('bag'), '--clock', '--rate', arg('rate'),
             '--delay', arg('delay')] + (['--loop'] if loop else []),
        name='bag_play', output='screen')

    with open(arg('params_file'), encoding='utf-8') as f:
        parameters = node_parameters(f.read())
    overrides = {'use_sim_time': True}
    if arg('model'):
        overrides['model'] = arg('model')
    if arg('input_transport'):
        overrides['input_transport'] = arg('input_transport')
    if cameras:
        overrides['cameras'] = cameras
        namespace = ''
        inputs = [(f'{c}/image', t) for c, t in zip(cameras, topics)]
    else:
        namespace = camera_namespace(topics[0])
        inputs = [('image', topics[0])]
    remappings = [r for local, topic in inputs
                  for r in ((local, topic), (local + '/compressed', topic + '/compressed'))]
    node = Node(package='seg_perception', executable='segmentation_node',
                name='segmentation_node', namespace=namespace, output='screen',
                emulate_tty=True, parameters=[parameters, overrides],
                remappings=remappings,
                additional_env={'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA'})
    actions = [node, play]
    if not loop:  # the drive is over: stop the node (and RViz) too
        actions.append(RegisterEventHandler(OnProcessExit(
            target_action=play, on_exit=[EmitEvent(event=Shutdown(reason='bag finished'))])))
    if arg('rviz').lower() in TRUE:
        frame = arg('camera_frame') or camera_namespace(topics[0]).strip('/') or 'camera'
        with open(arg('rviz_config'), encoding='utf-8') as f:
            text = rviz_config(f.read(), topics[0], frame)
        fd, path = tempfile.mkstemp(prefix='seg_perception_', suffix='.rviz')
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        actions.append(Node(package='rviz2', executable='rviz2', name='rviz2', output='screen',
                            arguments=['-d', path], parameters=[{'use_sim_time': True}]))
    return actions
