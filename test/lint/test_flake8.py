"""flake8 with ament's configuration, as an ordinary test."""

from pathlib import Path

from ament_flake8.main import main_with_errors
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The project's own Python sources (never .venv or build outputs).
LINTED = ('seg_perception', 'seg_training', 'test', 'bench', 'launch', 'setup.py')


def linted_paths() -> list:
    """Absolute paths of the linted folders and files that exist in this checkout."""
    return [str(ROOT / p) for p in LINTED if (ROOT / p).exists()]


@pytest.mark.linter
def test_flake8():
    rc, errors = main_with_errors(argv=linted_paths())
    assert rc == 0, f'flake8 found {len(errors)} problems:\n' + '\n'.join(errors)
