"""
Launch segmentation_node on one or more camera topics, optionally with RViz.

    ros2 launch seg_perception segment.launch.py image:=/camera/image_raw
    ros2 launch seg_perception segment.launch.py image:=/front/image_raw model:=/path/model.pt
    ros2 launch seg_perception segment.launch.py cameras:=front,rear rviz:=true
    ros2 launch seg_perception segment.launch.py image:=/rear/image input_transport:=compressed
    ros2 launch seg_perception segment.launch.py params_file:=/path/segment.yaml use_sim_time:=true

Outputs live in the camera's namespace (seg_perception/launch_support.py):
``image:=/front/image_raw`` runs ``/front/segmentation_node`` publishing ``/front/segmentation/*``;
``cameras:=front,rear`` runs one ``/segmentation_node`` for ``/<camera>/<image_name>``, publishing
``/<camera>/segmentation/*``.

Arguments: ``image``, ``cameras``, ``image_name``, ``input_transport`` (raw | compressed: the node
reads ``<image>/compressed``; empty: as in params_file), ``reliability`` (input QoS; empty: as in
params_file), ``model`` (empty: the params file's, else the bundled default), ``params_file``
(default: the installed config/segment.yaml), ``use_sim_time``, ``rviz`` (RViz with
config/segment.rviz set to the (first) camera; a clear error when rviz2 is missing),
``rviz_config``, ``camera_frame`` (RViz fixed frame; empty: the camera's name) and
``dds_profile``: the Fast DDS XML profile set (as FASTDDS_DEFAULT_PROFILES_FILE, unless the
environment already names one) for every process this launch starts after it, node, player and
camera drivers included (default: the installed config/fastdds_large_images.xml, a 32 MiB
shared-memory segment that best-effort frames of megabytes need; empty: none). The launch
imports live inside the functions so the file also loads where ROS is installed from wheels
without ``launch``.
"""

import os


def generate_launch_description():
    """Declare the arguments; the node (and RViz) are built once their values are known."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    share = get_package_share_directory('seg_perception')
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='camera topic (sensor_msgs/Image) to segment'),
        DeclareLaunchArgument('cameras', default_value='',
                              description='comma list of camera namespaces, e.g. front,rear '
                              '(one node for all; replaces image)'),
        DeclareLaunchArgument('image_name', default_value='image_raw',
                              description='image topic name under each camera namespace'),
        DeclareLaunchArgument('input_transport', default_value='',
                              description='raw | compressed (empty: as in params_file)'),
        DeclareLaunchArgument('reliability', default_value='',
                              description='input QoS best_effort | reliable (empty: params_file)'),
        DeclareLaunchArgument('model', default_value='',
                              description='model file (.pt); empty: params file or bundled'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'segment.yaml'),
                              description='node parameters (YAML)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='follow /clock (rosbag playback with --clock)'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start RViz with the segmentation view'),
        DeclareLaunchArgument('rviz_config',
                              default_value=os.path.join(share, 'config', 'segment.rviz'),
                              description='RViz config template'),
        DeclareLaunchArgument('camera_frame', default_value='',
                              description="RViz fixed frame; empty: the camera's name"),
        DeclareLaunchArgument('dds_profile',
                              default_value=os.path.join(share, 'config',
                                                         'fastdds_large_images.xml'),
                              description='Fast DDS XML profile for the processes started '
                              '(empty: none; an environment FASTDDS_DEFAULT_PROFILES_FILE wins)'),
        OpaqueFunction(function=_segmentation_node),
    ])


def _segmentation_node(context):
    """Check the arguments, then build the node (and RViz) from their values."""
    from launch.actions import ExecuteProcess, SetEnvironmentVariable
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from seg_perception import launch_support as ls

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    params_text = ls.read_params_file(arg('params_file'))
    # cameras:=front,rear wins over the params file's list; a one-camera node takes image.
    cameras = (ls.camera_list(arg('cameras'))
               or ls.params_cameras(ls.node_parameters(params_text)))
    namespace, image_remappings, topics = ls.node_layout(arg('image'), cameras,
                                                         arg('image_name'))
    parameters = ls.node_parameters(params_text, namespace)
    parameters['use_sim_time'] = ls.is_true(arg('use_sim_time'), 'use_sim_time')
    for name in ('model', 'input_transport', 'reliability'):
        if arg(name):
            parameters[name] = arg(name)
    parameters['cameras'] = cameras
    dds = ls.dds_environment(arg('dds_profile'))
    rviz = ls.is_true(arg('rviz'), 'rviz')
    rviz_exe = ls.find_rviz() if rviz else None  # before anything starts: no orphan on error
    node = Node(
        package='seg_perception',
        executable='segmentation_node',
        name='segmentation_node',
        namespace=namespace,
        output='screen',
        emulate_tty=True,
        ros_arguments=ls.parameter_arguments(parameters),
        remappings=image_remappings,
        additional_env=dds,
    )
    # Set for the launch too: a player or camera driver started after the node gets it as well.
    actions = [SetEnvironmentVariable(k, v) for k, v in dds.items()]
    actions += [node, ls.failure_handler(node, 'segmentation_node', 'see its log above')]
    if rviz_exe:
        frame = arg('camera_frame') or ls.camera_namespace(topics[0]).strip('/') or 'camera'
        try:
            with open(arg('rviz_config'), encoding='utf-8') as f:
                text = ls.rviz_config(f.read(), topics[0], frame)
        except OSError as e:
            raise ls.LaunchSetupError(f'rviz_config: {e}') from None
        path = ls.write_rviz_config(text)
        actions += [ls.cleanup_handler(path), ExecuteProcess(
            cmd=[rviz_exe, '-d', path, '--ros-args', '-p',
                 f'use_sim_time:={str(parameters["use_sim_time"]).lower()}'],
            name='rviz2', output='screen')]
    return actions
