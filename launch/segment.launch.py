"""
Launch segmentation_node on a camera topic.

    ros2 launch seg_perception segment.launch.py image:=/camera/image_raw
    ros2 launch seg_perception segment.launch.py image:=/front/image_raw model:=/path/model.pt
    ros2 launch seg_perception segment.launch.py params_file:=/path/segment.yaml use_sim_time:=true

Arguments: ``image`` (input topic, remapped onto the node's ``image``; with
``input_transport: compressed`` the node reads ``<image>/compressed``), ``model`` (empty: the one
in the params file, else the bundled default), ``params_file`` (default: the installed
config/segment.yaml) and ``use_sim_time``. The node runs with
``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` (large images over shared memory / TCP, not UDP
fragments). The launch imports live inside the function so the file also loads where ROS is
installed from wheels without ``launch``.
"""

import os


def generate_launch_description():
    """Declare the arguments and the node; the node is built once they are known."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    default_params = os.path.join(get_package_share_directory('seg_perception'), 'config',
                                  'segment.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='image',
                              description='camera topic (sensor_msgs/Image) to segment'),
        DeclareLaunchArgument('model', default_value='',
                              description='model file (.pt); empty: params file or bundled'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='node parameters (YAML)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='follow /clock (rosbag playback with --clock)'),
        OpaqueFunction(function=_segmentation_node),
    ])


def _segmentation_node(context):
    """Build the node action from the resolved launch arguments."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    image = LaunchConfiguration('image').perform(context)
    model = LaunchConfiguration('model').perform(context)
    use_sim_time = LaunchConfiguration('use_sim_time').perform(context).strip().lower()
    overrides = {'use_sim_time': use_sim_time in ('true', '1', 'yes')}
    if model:
        overrides['model'] = model
    return [Node(
        package='seg_perception',
        executable='segmentation_node',
        name='segmentation_node',
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file').perform(context), overrides],
        remappings=[('image', image), ('image/compressed', image + '/compressed')],
        additional_env={'FASTDDS_BUILTIN_TRANSPORTS': 'LARGE_DATA'},
    )]
