"""
No import cycles: between the project's modules, and between its rooms.

Every .py file of seg_perception and seg_training is parsed (not imported); each ``import`` and
``from ... import`` anywhere in it, in a function or under ``if TYPE_CHECKING`` too, is an edge
to the project module it names. A room is a sub-package of seg_training or seg_perception
(``seg_training.nets``, ``seg_perception.demo``); the top-level modules of each package form a
room of their own (``seg_training``, ``seg_perception``). A cycle fails the test, named.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ('seg_perception', 'seg_training')

Graph = Dict[str, Set[str]]


def module_files() -> Dict[str, Path]:
    """Map each project module's dotted name to its file (a package to its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob('*.py')):
            parts = list(path.relative_to(ROOT).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts.pop()
            modules['.'.join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """
    Return the project modules a module imports, at any depth of its code.

    ``import X`` gives X, ``from X import y`` gives X.y when that is a module, else X; relative
    imports are resolved against the module's package.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ''
            if node.level:
                base = name.split('.')
                if path.name != '__init__.py':
                    base.pop()
                base = base[:len(base) - node.level + 1]
                source = '.'.join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f'{source}.{alias.name}'
                found.add(sub if sub in modules else source)
    return {m for m in found if m in modules and m != name}


def module_graph(modules: Dict[str, Path]) -> Graph:
    """Edges module -> project modules it imports."""
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


_MODULES: Dict[str, Path] = {}


def module_files_cache() -> Dict[str, Path]:
    """Return module_files(), read once."""
    if not _MODULES:
        _MODULES.update(module_files())
    return _MODULES


def room(module: str) -> str:
    """Return the room of a module: its package or sub-package right under the top package."""
    modules = module_files_cache()
    parts = module.split('.')
    if len(parts) >= 2 and modules.get('.'.join(parts[:2]), Path()).name == '__init__.py':
        return '.'.join(parts[:2])
    return parts[0]


def room_graph(graph: Graph) -> Graph:
    """Edges room -> room that one of its modules imports from."""
    rooms: Graph = {}
    for source, targets in graph.items():
        edges = rooms.setdefault(room(source), set())
        edges.update(room(t) for t in targets if room(t) != room(source))
    return rooms


def find_cycle(graph: Graph) -> Optional[List[str]]:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it has none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_names_a_cycle_and_accepts_a_dag():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_graph_sees_the_project():
    graph = module_graph(module_files_cache())
    assert 'seg_training.nets.checkpoint' in graph['seg_perception.node']
    assert 'seg_perception' in room_graph(graph)['seg_perception.demo']


def test_no_module_import_cycle():
    cycle = find_cycle(module_graph(module_files_cache()))
    assert cycle is None, 'module import cycle: ' + ' -> '.join(cycle)


def test_no_room_import_cycle():
    cycle = find_cycle(room_graph(module_graph(module_files_cache())))
    assert cycle is None, 'room import cycle: ' + ' -> '.join(cycle)
