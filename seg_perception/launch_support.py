"""
What launch/segment.launch.py and launch/replay.launch.py share: topics, parameters, RViz, checks.

Output namespace convention (launch files, config/segment.rviz and the README follow it):
a camera's outputs live next to its image, in the camera's namespace. Input ``/<ns>/image_raw``
gives ``/<ns>/segmentation/{labels,color,overlay,confidence,class_table}``.

- One camera (``image:=/front/image_raw``): the node runs in the camera's namespace, as
  ``/front/segmentation_node``, and publishes ``/front/segmentation/*``.
- Several (``cameras:=front,rear``): one node ``/segmentation_node`` reads
  ``/<camera>/<image_name>`` of each and publishes ``/<camera>/segmentation/*``.

Every argument is checked before anything starts: topic and camera names by rcl's rules
(seg_perception/ros_args.py), the params file's size, YAML (no aliases) and layout, the types of
its values, the DDS profile's XML. A problem is a LaunchSetupError naming the argument.

The plain helpers need neither ``launch`` nor ``launch_ros`` (tested without them); the
``*_handler`` functions import ``launch`` when a launch file calls them.
"""

import json
import os
import re
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple
import xml.etree.ElementTree as ET

from seg_perception import ros_args
from seg_training.base.logtext import loggable

NODE_NAME = 'segmentation_node'
TRUE = ('true', '1', 'yes', 'on')
FALSE = ('false', '0', 'no', 'off', '')
# The line segmentation_node logs once its model is loaded and its subscriptions exist
# (seg_perception/node.py: "segmenting /front/image_raw (raw) with ..."); playback waits for it.
READY_PATTERN = re.compile(r'segmenting (/\S+)')
# The longest names the node makes from its namespace and each camera's input topic.
LONGEST_SERVICE = 'set_parameters_atomically'
LONGEST_OUTPUT = 'segmentation/overlay/compressed'
SCALAR_TYPES = (bool, int, float, str)  # what a ROS parameter (or an array of one) holds
DDS_PROFILE_ROOTS = ('dds', 'profiles')  # root elements of a Fast DDS XML profile file
# Display names in config/segment.rviz -> topic under the camera namespace ('' = the input).
RVIZ_TOPICS = {'Camera input': '', 'Segmentation overlay': 'segmentation/overlay',
               'Segmentation colour mask': 'segmentation/color'}
RVIZ_HINT = 'install RViz (ros-$ROS_DISTRO-rviz2) or launch with rviz:=false'
PLAYER_HINT = 'is rosbag2 installed (ros-$ROS_DISTRO-rosbag2) and the bag readable?'


class LaunchSetupError(RuntimeError):
    """A launch argument or a missing program that keeps the launch from starting."""


def is_true(value: str, name: str) -> bool:
    """Parse a boolean launch argument; anything but true/false values is an error naming it."""
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise LaunchSetupError(f'launch argument {name}:={value!r} is not true or false')


def camera_namespace(topic: str) -> str:
    """Return the namespace of a camera topic: '/front/image_raw' -> '/front', '/image' -> ''."""
    return '/'.join(('/' + topic.strip('/')).split('/')[:-1])


def camera_list(text: str, what: str = 'launch argument cameras') -> List[str]:
    """Parse ``cameras:=front,rear`` (or ``[front, rear]``) into camera namespaces."""
    names = [c.strip().strip('\'"').strip('/') for c in text.strip().strip('[]').split(',')]
    return checked_cameras([c for c in names if c], what)


def checked_cameras(names: Sequence[Any], what: str) -> List[str]:
    """Return camera names without slashes at the ends; LaunchSetupError names ``what``."""
    for name in names:
        try:
            ros_args.check_camera(name)
        except ValueError as e:
            raise LaunchSetupError(f'{what}: {e}') from None
    names = [n.strip('/') for n in names]
    if len(set(names)) != len(names):
        raise LaunchSetupError(f'{what}: {loggable(names)} names a camera twice')
    return names


def params_cameras(params: Dict[str, Any]) -> List[str]:
    """Return the ``cameras`` of a params file's parameters: a list of names, or none."""
    value = params.get('cameras')
    if value is None or value == []:
        return []
    if not isinstance(value, list):
        raise LaunchSetupError(f'params_file: cameras is {type(value).__name__} '
                               f'{loggable(repr(value), 60)}, not a list of camera names '
                               '(e.g. [front, rear])')
    return checked_cameras(value, 'params_file: cameras')


def _check_name(name: str, kind: str, what: str, made: bool = False) -> str:
    """Return ``name`` if rcl takes it as a ``kind`` name, else raise an error naming ``what``."""
    reason = ros_args.name_error(name, kind)
    if reason is None:
        return name
    shown = f"'{loggable(name)}'"
    if made:  # a name the node makes from the argument
        raise LaunchSetupError(f"{what}: the node's {kind} {shown} would not be a valid ROS "
                               f'name: {reason}')
    raise LaunchSetupError(f'{what}: {shown} is not a valid ROS {kind} name: {reason}')


def camera_topics(image: str, cameras: Sequence[str], image_name: str) -> List[str]:
    """
    Return the input topic of each camera: ``image`` alone, or ``/<camera>/<image_name>``.

    Each is a valid ROS topic name (rcl's rules) or a LaunchSetupError names the argument.
    """
    if cameras:
        if not image_name.strip('/'):
            raise LaunchSetupError('launch argument image_name is empty')
        _check_name('/' + image_name.strip('/'), 'topic', 'launch argument image_name')
        return [_check_name(f'/{c.strip("/")}/{image_name.strip("/")}', 'topic',
                            'launch arguments cameras and image_name') for c in cameras]
    if not image.strip('/'):
        raise LaunchSetupError('launch argument image is empty')
    return [_check_name('/' + image.strip('/'), 'topic', 'launch argument image')]


def node_layout(image: str, cameras: Sequence[str],
                image_name: str) -> Tuple[str, List[Tuple[str, str]], List[str]]:
    """
    Return the node's namespace, its remappings and the input topics (the convention above).

    Each camera's ``image`` and ``image/compressed`` are remapped, so both transports work.
    """
    topics = camera_topics(image, cameras, image_name)
    if cameras:
        namespace, inputs = '', [(f'{c}/image', t) for c, t in zip(cameras, topics)]
    else:
        namespace, inputs = camera_namespace(topics[0]), [('image', topics[0])]
    what = 'launch arguments cameras and image_name' if cameras else 'launch argument image'
    for topic in topics:  # the longest names made from it must fit rcl's bounds too
        _check_name(topic + '/compressed', 'topic', what, made=True)
        _check_name(f'{camera_namespace(topic)}/{LONGEST_OUTPUT}', 'topic', what, made=True)
    _check_name(f'{namespace}/{NODE_NAME}/{LONGEST_SERVICE}', 'service', what, made=True)
    remappings = [r for local, topic in inputs
                  for r in ((local, topic), (local + '/compressed', topic + '/compressed'))]
    return namespace, remappings, topics


def output_topics(input_topic: str) -> Dict[str, str]:
    """Return the node's output topics for one camera input topic."""
    ns = camera_namespace(input_topic)
    return {name: f'{ns}/segmentation/{name}'
            for name in ('labels', 'color', 'overlay', 'confidence', 'class_table')}


def read_params_file(path: str) -> str:
    """Return the text of the params file (bounded in size); LaunchSetupError if it has none."""
    try:
        return ros_args.read_params_file(path)
    except ValueError as e:
        raise LaunchSetupError(f'launch argument params_file: {e}') from None


def node_parameters(text: str, namespace: str = '', node: str = NODE_NAME) -> Dict[str, Any]:
    """
    Return the ``ros__parameters`` for ``node`` in a parameters YAML file, flattened.

    Keys ``/**``, ``node``, ``/node`` and ``<namespace>/node`` apply (in that order), so the
    shipped config/segment.yaml reaches the node in whatever namespace it runs. YAML aliases,
    and entries that are not ``{ros__parameters: {...}}`` mappings, are errors naming the key.
    """
    try:
        data = ros_args.load_yaml(text)
    except ValueError as e:
        raise LaunchSetupError(f'params_file: not a parameters YAML file: {e}') from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise LaunchSetupError('params_file: expected a mapping of node names, not '
                               f'{type(data).__name__}')
    params: Dict[str, Any] = {}
    keys = ['/**', node, '/' + node]
    if namespace:
        keys.append(f'{namespace.rstrip("/")}/{node}')
    for key in keys:
        entry = data.get(key)
        # {ros__parameters: {...}}; a mapping without it nests namespaces (other nodes)
        values = entry.get('ros__parameters') if isinstance(entry, dict) else entry
        if values is None:
            continue
        if not isinstance(values, dict):
            where = f'{key}.ros__parameters' if isinstance(entry, dict) else key
            raise LaunchSetupError(f"params_file: '{loggable(where)}' is "
                                   f'{type(values).__name__}, not a mapping (expected '
                                   f'{key}: {{ros__parameters: {{name: value, ...}}}})')
        params.update(_flatten(values, where=f"params_file: '{loggable(key)}'"))
    return params


def _flatten(params: Dict[str, Any], prefix: str = '', where: str = '') -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise LaunchSetupError(f'{where}: parameter name {loggable(repr(name))} under '
                                   f"'{prefix}' is not a name")
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{name}.', where))
        else:
            flat[prefix + name] = value
    return flat


def parameter_arguments(params: Dict[str, Any]) -> List[str]:
    """
    Return ``-p name:=value`` ROS arguments for ``params`` (values as YAML flow literals).

    Empty lists are left out: they carry no type, launch_ros refuses them and the node's own
    default is empty. Command-line parameters need no temporary parameter files.
    """
    args: List[str] = []
    for name, value in params.items():
        if isinstance(value, (list, tuple)) and not value:
            continue
        if not _parameter_value(value):
            raise LaunchSetupError(
                f'parameter {name}: cannot pass {loggable(repr(value), 60)} '
                '(a ROS parameter is a bool, integer, double or string, or a list of one type)')
        args += ['-p', f'{name}:={json.dumps(list(value) if isinstance(value, tuple) else value)}']
    return args


def _parameter_value(value: Any) -> bool:
    """Tell whether ``value`` is one a ROS parameter holds (a scalar, or a list of one type)."""
    if isinstance(value, (list, tuple)):
        kinds = {type(v) for v in value}
        return len(kinds) == 1 and kinds.pop() in SCALAR_TYPES
    return type(value) in SCALAR_TYPES


def rviz_config(text: str, image: str, frame: str) -> str:
    """Point config/segment.rviz's displays at the camera ``image`` and fix ``frame``."""
    import yaml

    try:
        config = ros_args.load_yaml(text)
        manager = config['Visualization Manager']
        outputs = output_topics(image)
        for display in manager['Displays']:
            suffix = RVIZ_TOPICS.get(display.get('Name'))
            if suffix is not None:
                name = suffix.rsplit('/', 1)[-1]
                display['Topic']['Value'] = outputs[name] if suffix else image
        manager['Global Options']['Fixed Frame'] = frame
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LaunchSetupError(f'launch argument rviz_config: not an RViz config '
                               f'({type(e).__name__}: {loggable(e, 200)})') from None
    return yaml.safe_dump(config, sort_keys=False)


def find_rviz() -> str:
    """Return rviz2's executable, or raise LaunchSetupError saying how to get it."""
    from ament_index_python.packages import get_package_prefix, PackageNotFoundError

    try:
        prefix = get_package_prefix('rviz2')
    except PackageNotFoundError:
        raise LaunchSetupError(f'rviz:=true but package rviz2 is not installed: {RVIZ_HINT}'
                               ) from None
    exe = os.path.join(prefix, 'lib', 'rviz2', 'rviz2')
    if not os.access(exe, os.X_OK):
        raise LaunchSetupError(f'rviz:=true but {exe} is missing: {RVIZ_HINT}')
    return exe


def write_rviz_config(text: str) -> str:
    """Write an RViz config to a temporary file and return its path (removed on shutdown)."""
    fd, path = tempfile.mkstemp(prefix='seg_perception_', suffix='.rviz')
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(text)
    return path


def dds_environment(profile: str, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """
    Fast DDS settings for the processes a launch file starts (node, player, camera drivers).

    ``profile`` is the XML profile file (config/fastdds_large_images.xml: a 32 MiB shared-memory
    segment, without which best-effort frames of megabytes are lost between processes); an
    empty value, or a FASTDDS_DEFAULT_PROFILES_FILE the user already set, leaves the profile alone.
    """
    environ = os.environ if environ is None else environ
    env = {'FASTDDS_BUILTIN_TRANSPORTS': environ.get('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')}
    if profile and not environ.get('FASTDDS_DEFAULT_PROFILES_FILE'):
        if not os.path.isfile(profile):
            raise LaunchSetupError(f'launch argument dds_profile: {profile} does not exist')
        check_dds_profile(profile)
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    return env


def check_dds_profile(path: str) -> None:
    """
    Raise LaunchSetupError unless ``path`` is a Fast DDS XML profile file (bounded in size).

    Fast DDS skips a profile file it cannot parse with no more than a log line, and the
    processes then run without it (large best-effort frames are lost): refused here instead.
    """
    what = f'launch argument dds_profile: {path}'
    try:
        size = os.path.getsize(path)
        if size > ros_args.MAX_PARAMS_FILE_BYTES:
            raise LaunchSetupError(f'{what} has {size} bytes, more than the '
                                   f'{ros_args.MAX_PARAMS_FILE_BYTES} a profile file may have')
        root = ET.parse(path).getroot()
    except OSError as e:
        raise LaunchSetupError(f'{what}: cannot read it: {e.strerror}') from None
    except ET.ParseError as e:
        raise LaunchSetupError(f'{what} is not XML: {e}') from None
    tag = root.tag.rsplit('}', 1)[-1]  # without its XML namespace
    if tag not in DDS_PROFILE_ROOTS:
        raise LaunchSetupError(f'{what} is not a Fast DDS profile file: its root element is '
                               f'<{loggable(tag, 60)}>, not <dds> or <profiles>')
    if tag == 'dds' and not any(c.tag.rsplit('}', 1)[-1] == 'profiles' for c in root):
        raise LaunchSetupError(f'{what} is not a Fast DDS profile file: <dds> holds no '
                               '<profiles>')


def player_command(bag: str, rate: str, delay: str, loop: bool) -> List[str]:
    """Return the ``ros2 bag play`` command line (``--clock`` for use_sim_time)."""
    if not bag:
        raise LaunchSetupError('launch argument bag is required (rosbag2 folder or file)')
    if not os.path.exists(bag):
        raise LaunchSetupError(f'launch argument bag: {bag} does not exist')
    for name, value in (('rate', rate), ('delay', delay)):
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number >= 0 or (name == 'rate' and number == 0):
            raise LaunchSetupError(f'launch argument {name}:={value!r} is not a valid number')
    return (['ros2', 'bag', 'play', bag, '--clock', '--rate', rate, '--delay', delay]
            + (['--loop'] if loop else []))


def bag_reliability(bag: str, topics: Sequence[str]) -> str:
    """
    Return the input reliability that matches how ``ros2 bag play`` publishes ``topics``.

    rosbag2 plays a topic with the QoS its publishers offered when it was recorded (metadata.yaml
    ``offered_qos_profiles``): best effort if one was, else reliable (also when the bag records
    none: the player's default). A reliable subscription would not match a best-effort player,
    and a best-effort one loses large frames of a reliable player (Fast DDS fragments).
    ``topics`` count with and without ``/compressed``.
    """
    path = bag if os.path.isdir(bag) else os.path.dirname(os.path.abspath(bag))
    try:
        text = ros_args.read_params_file(os.path.join(path, 'metadata.yaml'))
        info = (ros_args.load_yaml(text) or {}).get('rosbag2_bagfile_information') or {}
    except (ValueError, AttributeError):
        return 'reliable'
    wanted = set(topics) | {t + '/compressed' for t in topics}
    for entry in info.get('topics_with_message_count') or []:
        meta = (entry or {}).get('topic_metadata') or {}
        if meta.get('name') not in wanted:
            continue
        profiles = meta.get('offered_qos_profiles') or []
        if isinstance(profiles, str):  # metadata version <= 8: a YAML document in a string
            try:
                profiles = ros_args.load_yaml(profiles) or []
            except ValueError:
                return 'reliable'
        for profile in profiles:
            if str((profile or {}).get('reliability')).lower() in ('2', 'best_effort'):
                return 'best_effort'
    return 'reliable'


# --- event handlers (these import launch) ----------------------------------------------------

def ready_handler(entities: List[Any], target_action: Optional[Any] = None) -> Any:
    """
    Return a handler that starts ``entities`` once, when the node logs READY_PATTERN.

    Output arrives in chunks; lines are joined per stream before matching. Without
    ``target_action`` every process's output is watched (only the node logs that line).
    """
    from launch.event_handlers import OnProcessIO

    state = {'started': False, 'stdout': '', 'stderr': ''}

    def on_output(stream: str, event: Any) -> Optional[List[Any]]:
        if state['started']:
            return None
        text = state[stream] + event.text.decode(errors='replace')
        state[stream] = text[-4096:]
        if READY_PATTERN.search(text):
            state['started'] = True
            return entities
        return None

    from launch.actions import RegisterEventHandler
    return RegisterEventHandler(OnProcessIO(
        target_action=target_action,
        on_stdout=lambda event: on_output('stdout', event),
        on_stderr=lambda event: on_output('stderr', event)))


def failure_handler(target_action: Any, what: str, hint: str) -> Any:
    """
    Return a handler that fails the launch when ``target_action`` exits with an error.

    An exit status other than 0 before shutdown raises LaunchSetupError: launch logs it, stops
    every process it started and exits non-zero.
    """
    from launch.actions import RegisterEventHandler
    from launch.event_handlers import OnProcessExit

    def on_exit(event: Any, context: Any) -> None:
        if event.returncode not in (0, None) and not context.is_shutdown:
            raise LaunchSetupError(f'{what} exited with status {event.returncode}: {hint}')

    return RegisterEventHandler(OnProcessExit(target_action=target_action, on_exit=on_exit))


def cleanup_handler(path: str) -> Any:
    """Return a handler that removes ``path`` when the launch shuts down."""
    from launch.actions import RegisterEventHandler
    from launch.event_handlers import OnShutdown

    def remove(event: Any, context: Any) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    return RegisterEventHandler(OnShutdown(on_shutdown=remove))
