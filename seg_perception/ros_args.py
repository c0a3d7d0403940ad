"""
Checks of what users hand the node and the launch files: ROS names and parameter files.

Names follow rcl's own rules, through rclpy's validators (``validate_full_topic_name``,
``validate_namespace``): what they refuse, rcl would refuse when the node makes its topics, with
an RCLError. A parameter file is bounded in size (:data:`MAX_PARAMS_FILE_BYTES`) and its YAML may
not use aliases: rcl's parameter parser refuses them ("Will not support aliasing"), and a few
hundred bytes of nested aliases expand to gigabytes in a YAML library that follows them.

Every check raises ValueError with a one-line reason; callers add the argument's name.
"""

import os
from typing import Any, Optional

from rclpy.exceptions import NameValidationException
from rclpy.validate_full_topic_name import validate_full_topic_name
from rclpy.validate_namespace import validate_namespace
import yaml

from seg_training.base.logtext import loggable

MAX_PARAMS_FILE_BYTES = 1 << 20  # a parameter file larger than 1 MiB is refused unread


def name_error(name: str, kind: str = 'topic') -> Optional[str]:
    """
    Return why ``name`` is not a valid fully qualified ROS name of ``kind``; None when it is.

    ``kind`` is 'topic', 'service' or 'namespace'. The reason is rcl's, on one line.
    """
    try:
        if kind == 'namespace':
            validate_namespace(name)
        else:
            validate_full_topic_name(name, is_service=kind == 'service')
    except NameValidationException as e:
        # "Invalid topic name: <reason>:\n  '<name>'\n   ^": the first line, without the colon
        return str(e).splitlines()[0].split(': ', 1)[-1].rstrip(':')
    return None


def check_camera(camera: Any) -> str:
    """
    Return ``camera`` (``front``, ``/front``, ``robot/front``); ValueError says why it is not one.

    A camera is a namespace: its topics are ``<camera>/image`` and ``<camera>/segmentation/*``.
    """
    if not isinstance(camera, str):
        raise ValueError(f'{camera!r} is {type(camera).__name__}, not a camera name')
    if not camera.strip('/'):
        raise ValueError(f'{camera!r} is not a camera name (empty)')
    reason = name_error('/' + camera.lstrip('/'), 'namespace')
    if reason:
        raise ValueError(f"'{loggable(camera)}' is not a valid ROS namespace: {reason}")
    return camera


def read_params_file(path: str) -> str:
    """Return the text of a parameter file; ValueError names the file when it cannot be one."""
    try:
        size = os.stat(path).st_size
        if not os.path.isfile(path):
            raise ValueError(f'{path} is not a file')
        if size > MAX_PARAMS_FILE_BYTES:
            raise ValueError(f'{path} has {size} bytes, more than the {MAX_PARAMS_FILE_BYTES} '
                             'a parameter file may have')
        with open(path, 'rb') as f:
            data = f.read(MAX_PARAMS_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f'cannot read {path}: {e.strerror}') from None
    if len(data) > MAX_PARAMS_FILE_BYTES:  # grew since stat
        raise ValueError(f'{path} has more than {MAX_PARAMS_FILE_BYTES} bytes')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f'{path} is not UTF-8 text (byte {e.start})') from None


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (``*name``) where it would expand them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f'alias *{event.anchor} is not allowed (rcl does not take aliases)',
                event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Parse YAML without aliases; ValueError with the problem and its line on failure."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as e:
        where = f' at line {e.problem_mark.line + 1}' if e.problem_mark else ''
        raise ValueError(f'{e.problem or e.context}{where}') from None
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0]) from None
