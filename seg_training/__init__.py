"""
Training side of seg_perception: ERFNet, class tables, model files, datasets and training.

Its rooms, each importing only those listed before it: ``base`` (what all share), ``nets`` (the
networks and the model file), ``datasets``, ``evaluation`` (seg-eval, which scores through
seg_perception's pipeline), ``training`` (seg-train); ``export`` (seg-export) and ``synth``
(seg-synth) beside them. The modules' paths from before the rooms still import (:data:`MOVED`).
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

# OpenMP threads that spin while they wait stall for whole time slices when the CPU is shared
# (measured here: an ERFNet training step 15 s instead of 0.35 s at load 6 on 2 cores). Sleeping
# waiters cost little when the machine is idle. Set before torch loads its OpenMP runtime; a value
# in the environment wins.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# The modules' paths before they were grouped into rooms (nets, datasets, training, evaluation,
# base): each old dotted name imports the module now at the new one, the same module object,
# when it is first imported (nothing is loaded here).
MOVED = {
    'architectures': 'nets.architectures', 'checkpoint': 'nets.checkpoint',
    'convert': 'nets.convert', 'espnet': 'nets.espnet', 'espnetv2': 'nets.espnetv2',
    'model': 'nets.model', 'preprocess': 'nets.preprocess', 'provenance': 'nets.provenance',
    'tta': 'nets.tta',
    'class_map': 'datasets.class_map', 'data': 'datasets.build', 'formats': 'datasets.formats',
    'transforms': 'datasets.transforms',
    'config': 'training.config', 'distill': 'training.distill', 'engine': 'training.engine',
    'lock': 'training.lock', 'losses': 'training.losses', 'train': 'training.loop',
    'transfer': 'training.transfer',
    'evaluate': 'evaluation.seg_eval', 'metrics': 'evaluation.metrics',
    'plots': 'evaluation.plots',
    'classes': 'base.classes', 'cli': 'base.cli', 'files': 'base.files',
    'logtext': 'base.logtext',
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``seg_training.<old>`` as the module at its new path (:data:`MOVED`)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition('.')
        if package != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder, replaced in sys.modules by exec_module

    def exec_module(self, module):
        new = importlib.import_module(f'{__name__}.{MOVED[module.__name__.partition(".")[2]]}')
        sys.modules[module.__name__] = new  # what the import statement returns

    def get_code(self, fullname):
        """Give ``python -m seg_training.<old>`` the code of the module at the new path."""
        new = f'{__name__}.{MOVED[fullname.partition(".")[2]]}'
        return importlib.util.find_spec(new).loader.get_code(new)


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
