"""
package.xml declares, by keys rosdep resolves, what every installed command and test imports.

For each console script of setup.py (plus ``python -m seg_perception.demo`` and the launch
files), the imports of its module and of every project module it reaches (function-level imports
included) are mapped to rosdep keys: Python libraries through PYTHON_KEYS, anything else must be
a ROS package declared under its own name. Every declared key must be one the public rosdep
database resolves (RESOLVABLE_KEYS); a library without a key (PIP_ONLY) is not declared but
named in requirements.txt, which ROS users install with pip (README, Install).
"""

import ast
from pathlib import Path
import re
import sys
from typing import Dict, Iterator, List, Optional, Set, Tuple
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ('seg_perception', 'seg_training')
# Keys the public rosdep database resolves, as found in github.com/ros/rosdistro at commit
# 8468e88ccd523427f9131e39d2af0938f1c298b2 (2026-08-22). Python libraries: rosdep/python.yaml,
# each with an ubuntu and a debian rule. ROS packages: released in both jazzy/distribution.yaml
# and kilted/distribution.yaml. Add a key here only after finding it there.
RESOLVABLE_PYTHON_KEYS = {
    'python3-numpy', 'python3-yaml', 'python3-opencv', 'python3-pil', 'python3-tqdm',
    'python3-matplotlib', 'python3-pytorch-pip', 'python3-rosbags-pip',
    'python3-albumentations-pip', 'python3-tensorboard-pip', 'python3-onnxruntime-pip',
    'python3-pytest', 'python3-pytest-timeout',
}
RESOLVABLE_ROS_PACKAGES = {
    'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'rcl_interfaces', 'rosgraph_msgs',
    'vision_msgs', 'builtin_interfaces', 'type_description_interfaces', 'ament_index_python',
    'launch', 'launch_ros', 'launch_testing', 'ros2bag', 'rosbag2_storage_default_plugins',
    'ament_flake8', 'ament_pep257',
}
RESOLVABLE_KEYS = RESOLVABLE_PYTHON_KEYS | RESOLVABLE_ROS_PACKAGES
# import name (or dotted prefix) -> rosdep key (torch's own build is installed first and its key
# skipped).
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
    'onnxruntime': 'python3-onnxruntime-pip',
    'pytest': 'python3-pytest',
}
# import name -> its distribution in requirements.txt: libraries no rosdep key resolves (none in
# rosdep/python.yaml at the commit above), installed with pip, never declared in package.xml.
PIP_ONLY = {'onnx': 'onnx', 'cityscapesscripts': 'cityscapesScripts'}
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
    if parts[0] in PIP_ONLY:
        return set()
    keys = {PYTHON_KEYS[p] for p in ('.'.join(parts[:i]) for i in range(1, len(parts) + 1))
            if p in PYTHON_KEYS}
    return keys or {parts[0]}


def requirements() -> Set[str]:
    """Return the distributions requirements.txt names (normalised: lower case, '-')."""
    names = set()
    for line in (ROOT / 'requirements.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if line:
            names.add(_normalised(re.split(r'[\s<>=!~;\[]', line)[0]))
    return names


def _normalised(distribution: str) -> str:
    return re.sub(r'[-_.]+', '-', distribution).lower()


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


def test_every_declared_key_resolves():
    keys = declared('exec_depend', 'depend', 'test_depend', 'build_depend', 'buildtool_depend')
    unresolvable = sorted(keys - RESOLVABLE_KEYS)
    assert not unresolvable, (
        f'package.xml declares keys rosdep cannot resolve: {unresolvable} (pip-only libraries '
        'belong in requirements.txt and PIP_ONLY; add a key to RESOLVABLE_KEYS only after '
        'finding it in ros/rosdistro)')
    assert set(PYTHON_KEYS.values()) <= RESOLVABLE_KEYS


@pytest.mark.parametrize('name,paths', entry_points(), ids=[n for n, _ in entry_points()])
def test_pip_only_imports_are_in_requirements_txt(name, paths):
    needed = {PIP_ONLY[imp.split('.')[0]] for imp in external_imports(paths)
              if imp.split('.')[0] in PIP_ONLY}
    missing = sorted(d for d in needed if _normalised(d) not in requirements())
    assert not missing, f'{name} imports libraries requirements.txt does not name: {missing}'


def test_pip_only_libraries_are_used_and_the_readme_skips_only_declared_keys():
    used = {imp.split('.')[0] for _, paths in entry_points() for imp in external_imports(paths)}
    assert set(PIP_ONLY) <= used, f'PIP_ONLY names libraries nothing imports: {PIP_ONLY}'
    readme = (ROOT / 'README.md').read_text()
    assert 'pip install torch -r seg_perception/requirements.txt' in readme
    skipped = re.search(r'--skip-keys "([^"]*)"', readme)
    assert skipped, 'README: the rosdep install command lost its --skip-keys'
    assert set(skipped.group(1).split()) <= declared('exec_depend')


def test_the_walk_finds_what_the_commands_are_known_to_use():
    scripts = console_scripts()
    found = {name: {k for imp in external_imports([module_file(mod)]) for k in keys_for(imp)}
             for name, mod in scripts.items()}
    assert {'rclpy', 'sensor_msgs', 'python3-pytorch-pip'} <= found['segmentation_node']
    assert 'python3-rosbags-pip' in found['seg-bag'] & found['seg-replay']
    assert 'python3-tensorboard-pip' in found['seg-train']
    assert 'python3-onnxruntime-pip' in found['seg-export']
    assert {'onnx', 'cityscapesscripts'} <= {imp.split('.')[0] for _, paths in entry_points()
                                             for imp in external_imports(paths)}


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
