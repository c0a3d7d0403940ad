"""
Play a recorded drive into segmentation_node on simulated time, optionally with RViz.

    ros2 launch seg_perception replay.launch.py bag:=/data/drive image:=/front/image_raw
    ros2 launch seg_perception replay.launch.py bag:=/data/drive image:=/front/image_raw rviz:=true
    ros2 launch seg_perception replay.launch.py bag:=/data/drive cameras:=front,rear rate:=0.5

segment.launch.py runs the node (and RViz) with ``use_sim_time:=true``; ``ros2 bag play --clock``
starts once the node has logged that it is ready (model loaded, subscriptions made), so no frame
is lost to model loading, then ``delay`` s later (DDS discovery). The outputs follow the
namespace convention of seg_perception/launch_support.py: ``/front/image_raw`` gives
``/front/segmentation/*``. Without ``loop`` the launch ends ``linger`` s after the bag does; a
player that fails (e.g. rosbag2 not installed) or a node that cannot start ends it with an error
and a non-zero exit status, stopping every process it started.

Arguments: ``bag`` (rosbag2 folder or file), ``rate`` (playback speed factor), ``loop``,
``delay`` (s between the node being ready and playback), ``linger`` (s the node keeps running
after the bag ends, for the last frames), ``reliability`` (default ``auto``: as the player
publishes, i.e. best effort when the bag's camera publishers were, else reliable), and those of
segment.launch.py: ``image``, ``cameras``, ``image_name``, ``input_transport``, ``model``,
``params_file``, ``rviz``, ``rviz_config``, ``camera_frame``.

The launch imports live inside the functions so the file also loads where ``launch`` is missing.
"""

import os

# Arguments handed on to segment.launch.py as they are.
NODE_ARGUMENTS = ('image', 'cameras', 'image_name', 'input_transport', 'reliability', 'model',
                  'params_file', 'rviz', 'rviz_config', 'camera_frame', 'dds_profile')


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
        ('delay', '5.0', 's between the node being ready and playback (DDS discovery)'),
        ('linger', '3.0', 's the node runs on after the bag ends (last frames)'),
        ('image', '/camera/image_raw', 'camera topic in the bag (single camera)'),
        ('cameras', '', 'comma list of cameras, e.g. front,rear (one node for all)'),
        ('image_name', 'image_raw', 'image topic name under each camera namespace'),
        ('input_transport', '', 'raw | compressed (empty: as in params_file)'),
        ('reliability', 'auto', "input QoS best_effort | reliable | auto (the bag's QoS)"),
        ('model', '', 'model file (.pt); empty: params file or bundled'),
        ('params_file', os.path.join(share, 'config', 'segment.yaml'), 'node parameters'),
        ('rviz', 'false', 'start RViz with the segmentation view'),
        ('rviz_config', os.path.join(share, 'config', 'segment.rviz'), 'RViz config template'),
        ('camera_frame', '', "RViz fixed frame; empty: the camera's name"),
        ('dds_profile', os.path.join(share, 'config', 'fastdds_large_images.xml'),
         'Fast DDS XML profile of the node and the player (empty: none)'),
    ]
    declared = [DeclareLaunchArgument(name, description=desc, **(
        {} if default is None else {'default_value': default})) for name, default, desc in args]
    return LaunchDescription(declared + [OpaqueFunction(function=_actions)])


def _actions(context):
    """Check the arguments, include the node, and play the bag once the node is ready."""
    from launch.actions import (EmitEvent, ExecuteProcess, IncludeLaunchDescription,
                                RegisterEventHandler, TimerAction)
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import LaunchConfiguration

    from seg_perception import launch_support as ls

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    loop = ls.is_true(arg('loop'), 'loop')
    linger = arg('linger')
    try:
        linger_s = float(linger)
    except ValueError:
        linger_s = -1.0
    if not linger_s >= 0:
        raise ls.LaunchSetupError(f'launch argument linger:={linger!r} is not a valid number')
    cmd = ls.player_command(arg('bag'), arg('rate'), arg('delay'), loop)
    play = ExecuteProcess(cmd=cmd, name='bag_play', output='screen',
                          additional_env=ls.dds_environment(arg('dds_profile')))

    def on_play_exit(event, ctx):
        if ctx.is_shutdown:
            return None
        if event.returncode != 0:
            raise ls.LaunchSetupError(f'{" ".join(cmd[:3])} exited with status '
                                      f'{event.returncode}: {ls.PLAYER_HINT}')
        return [TimerAction(period=linger_s, actions=[
            EmitEvent(event=Shutdown(reason='bag finished'))])]

    given = {name: arg(name) for name in NODE_ARGUMENTS}
    if given['reliability'] == 'auto':  # subscribe as the player will publish
        cameras = ls.camera_list(given['cameras'])
        topics = ls.camera_topics(given['image'], cameras, given['image_name'])
        given['reliability'] = ls.bag_reliability(arg('bag'), topics)
    segment = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            os.path.join(os.path.dirname(os.path.abspath(__file__)), 'segment.launch.py')),
        launch_arguments=list(given.items()) + [('use_sim_time', 'true')])
    return [segment, ls.ready_handler(
        [RegisterEventHandler(OnProcessExit(target_action=play, on_exit=on_play_exit)), play])]
