"""The module paths before seg_training was grouped into rooms still import the same modules."""

import importlib
import subprocess
import sys

import pytest

import seg_training

# old path -> names users and scripts import from it
NAMES = {
    'checkpoint': ['load_model', 'save_model', 'ModelInfo', 'ModelFileError', 'build_model'],
    'model': ['ERFNet'], 'data': ['SegmentationDataset', 'build_dataset', 'DatasetError'],
    'train': ['main'], 'evaluate': ['main', 'evaluate_model_file'], 'provenance': ['main'],
    'convert': ['main'], 'classes': ['ClassTable', 'CUSTOM8'], 'config': ['TrainConfig'],
}


@pytest.mark.parametrize('old', sorted(seg_training.MOVED))
def test_old_path_is_the_new_module(old):
    new = importlib.import_module(f'seg_training.{seg_training.MOVED[old]}')
    module = importlib.import_module(f'seg_training.{old}')
    assert module is new
    assert getattr(seg_training, old) is new
    for name in NAMES.get(old, []):
        assert getattr(module, name) is getattr(new, name)
    exec(f'from seg_training.{old} import *', {})  # noqa: S102 (what a script may do)


def test_importing_seg_training_loads_nothing_else():
    code = ('import sys, seg_training; '
            'print(sorted(m for m in sys.modules if m.startswith(("seg_training.", "torch"))))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'


def test_old_path_runs_as_a_script():
    proc = subprocess.run([sys.executable, '-m', 'seg_training.convert', '--help'],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'usage: python -m seg_training.nets.convert' in proc.stdout
