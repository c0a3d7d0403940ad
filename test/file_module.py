"""Import a file that is no package module (a bench script, a launch file) by its path."""

import importlib.util
from pathlib import Path
from types import ModuleType


def load_file(path: Path) -> ModuleType:
    """Import the Python file at ``path`` as a module named after it (dots become ``_``)."""
    name = path.name.removesuffix('.py').replace('.', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
