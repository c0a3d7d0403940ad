"""
Launch files: they compile, and define their launch description lazily.

``launch`` and ``launch_ros`` are not installed here, so the files import them inside
``generate_launch_description``; what can be checked without them is checked here.
"""

import ast
from pathlib import Path
import runpy

import pytest

LAUNCH_DIR = Path(__file__).resolve().parents[1] / 'launch'
LAUNCH_FILES = sorted(LAUNCH_DIR.glob('*.launch.py'))


def declared_arguments(tree: ast.AST) -> set:
    """Names given to ``DeclareLaunchArgument(...)`` calls as their first literal argument."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
            first = node.args[0]
            if name == 'DeclareLaunchArgument' and isinstance(first, ast.Constant):
                names.add(first.value)
    return names


def test_segment_launch_file_exists():
    assert (LAUNCH_DIR / 'segment.launch.py').is_file()


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_defines_a_description(path):
    source = path.read_text()
    compile(source, str(path), 'exec')
    namespace = runpy.run_path(str(path))  # fails if launch is imported at module level
    assert callable(namespace.get('generate_launch_description')), path.name


def test_segment_launch_file_arguments():
    path = LAUNCH_DIR / 'segment.launch.py'
    if not path.is_file():
        pytest.fail(f'{path} is missing')
    source = path.read_text()
    names = declared_arguments(ast.parse(source))
    assert {'model', 'use_sim_time'} <= names, names
    assert any('image' in n for n in names), names
    assert any('param' in n for n in names), names
    assert 'FASTDDS_BUILTIN_TRANSPORTS' in source and 'LARGE_DATA' in source
