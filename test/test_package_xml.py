"""
package.xml declares what every installed command, launch file and test imports.

For each console script of setup.py (plus ``python -m seg_perception.demo`` and the launch
files), the imports of its module and of every project module it reaches (function-level imports
included) are mapped to rosdep keys: Python libraries through PYTHON_KEYS, anything else must be
a ROS package declared under its own name.
"""

import ast
from pathlib import Path
import sys
from typing import Dict, Iterator, List, Optional, Set, Tuple
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ('seg_perception', 'seg_training')
# import name (or dotted prefix) -> rosdep key (rosdistro rosdep/python.yaml; torch's own build
# is installed first and its key skipped; onnx and cityscapesscripts have no key there yet).
PYTHON_KEYS = {
    'numpy': 'python3-numpy',
    'yaml': 'python3-yaml',
    'cv2': 'python3-opencv',
    'PIL': 'python3-pil',
    'tqdm': 'python3-tqdm',
    'matplotlib': 'python3-matplotlib',
    'torch': 'python3-pytorch-pip',
    'torch.utils.tensorboard': 'python3-tensorboard-pip',
    'rosbags': 'python3-rosbags-pip',
    'albumentations': 'python3-albumentations-pip',
    'onnx': 'python3-onnx-pip',
    'onnxruntime': 'python3-onnxruntime-pip',
    'cityscapesscripts': 'python3-cityscapesscripts-pip',
    'pytest': 'python3-pytest',
}
# Declared for what the launch files run rather than import (ros2 bag play and its storage).
RUN_NOT_IMPORTED = {'ros2bag', 'rosbag2_storage_default_plugins'}
EXTRA_ENTRY_POINTS = {'demo (python -m seg_perception.demo)': 'seg_perception.demo'}


def declared(*tags: str) -> Set[str]:
    root = ET.parse(ROOT / 'package.xml').getroot()
    return {e.text.strip() for tag in tags for e in root.findall(tag)}


def console_scripts() -> Dict[str, str]:
    """Return {command: module} from setup.py's console_scripts."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    specs = ast.literal_eval(value)
                    return {name.strip(): target.split(':')[0].strip()
                            for name, target in (s.split('=') for s in specs)}
    raise AssertionError('setup.py has no console_scripts')


def imports(path: Path) -> Iterator[str]:
    """Yield every import of a file (dotted, with the imported names; relative ones resolved)."""
    package = list(path.relative_to(ROOT).with_suffix('').parts)
    if path.name != '__init__.py':
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = '.'.join(base + ([node.module] if node.module else []))
            if module:
                yield module
                yield from (f'{module}.{a.name}' for a in node.names)


def module_file(module: str) -> Optional[Path]:
    base = ROOT / module.replace('.', '/')
    for path in (base.with_suffix('.py'), base / '__init__.py'):
        if path.exists():
            return path
    return None


def external_imports(paths: List[Path]) -> Set[str]:
    """Return the non-project, non-stdlib imports reached from ``paths`` within the project."""
    todo, seen, found = list(paths), set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path):
            top = name.split('.')[0]
            if top in PROJECT:
                if module_file(name) is not None:
                    todo.append(module_file(name))
            elif top not in sys.stdlib_module_names:
                found.add(name)
    return found


def keys_for(name: str) -> Set[str]:
    """Return the rosdep keys an import needs: mapped prefixes, else its top-level package."""
    parts = name.split('.')
    keys = {PYTHON_KEYS[p] for p in ('.'.join(parts[:i]) for i in range(1, len(parts) + 1))
            if p in PYTHON_KEYS}
    return keys or {parts[0]}


def entry_points() -> List[Tuple[str, List[Path]]]:
    points = []
    for name, module in {**console_scripts(), **EXTRA_ENTRY_POINTS}.items():
        path = module_file(module)
        main = path.with_name('__main__.py') if path and path.name == '__init__.py' else None
        points.append((name, [path] + ([main] if main and main.exists() else [])))
    points.append(('launch files', sorted((ROOT / 'launch').glob('*.launch.py'))))
    return points


@pytest.mark.parametrize('name,paths', entry_points(), ids=[n for n, _ in entry_points()])
def test_every_import_of_an_installed_command_is_declared(name, paths):
    assert all(p is not None and p.exists() for p in paths), f'{name}: module not found'
    exec_depends = declared('exec_depend', 'depend')
    missing = {key: imp.split('.')[0] for imp in sorted(external_imports(paths))
               for key in keys_for(imp) if key not in exec_depends}
    assert not missing, (f'{name} imports what package.xml does not declare as exec_depend '
                         f'(map Python libraries in PYTHON_KEYS): {missing}')


def test_the_walk_finds_what_the_commands_are_known_to_use():
    scripts = console_scripts()
    found = {name: {k for imp in external_imports([module_file(mod)]) for k in keys_for(imp)}
             for name, mod in scripts.items()}
    assert {'rclpy', 'sensor_msgs', 'python3-pytorch-pip'} <= found['segmentation_node']
    assert 'python3-rosbags-pip' in found['seg-bag'] & found['seg-replay']
    assert 'python3-tensorboard-pip' in found['seg-train']
    assert 'python3-onnxruntime-pip' in found['seg-export']


def test_every_declared_runtime_dependency_is_used():
    used = set()
    for _, paths in entry_points():
        used |= {k for imp in external_imports(paths) for k in keys_for(imp)}
    unused = declared('exec_depend') - used - RUN_NOT_IMPORTED
    assert not unused, f'package.xml declares exec_depends nothing imports: {sorted(unused)}'


def test_every_import_of_the_tests_is_declared():
    local = {p.stem for p in (ROOT / 'test').glob('*.py')}
    paths = sorted((ROOT / 'test').glob('*.py'))
    missing = {key: imp.split('.')[0] for imp in sorted(external_imports(paths))
               if imp.split('.')[0] not in local
               for key in keys_for(imp) if key not in declared('exec_depend', 'test_depend')}
    assert not missing, f'test imports package.xml does not declare: {missing}'
