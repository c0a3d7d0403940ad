"""Docstring conventions (pep257 with ament's selection), as an ordinary test."""

from ament_pep257.main import main
import pytest

from test_flake8 import linted_paths


@pytest.mark.linter
def test_pep257():
    rc = main(argv=linted_paths())
    assert rc == 0, 'docstring problems found (listed in the captured output above)'
