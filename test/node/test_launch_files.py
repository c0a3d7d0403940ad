"""
Every launch file compiles and defines its launch description lazily.

``launch`` and ``launch_ros`` are not installed here, so launch files import them inside
``generate_launch_description``; test_launch_file.py checks segment.launch.py's arguments.
"""

from pathlib import Path
import runpy

import pytest

LAUNCH_DIR = Path(__file__).resolve().parents[2] / 'launch'
LAUNCH_FILES = sorted(LAUNCH_DIR.glob('*.py'))


def test_the_node_launch_file_is_there():
    assert LAUNCH_DIR / 'segment.launch.py' in LAUNCH_FILES


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_defines_a_description(path):
    compile(path.read_text(), str(path), 'exec')
    namespace = runpy.run_path(str(path))  # fails where launch_ros is imported at module level
    assert callable(namespace.get('generate_launch_description')), path.name
