"""
seg-export's bad paths and options: one line naming them, and nothing written.

The export and its sidecar appear together or not at all.
"""

from pathlib import Path

import pytest

from seg_training import export as seg_export


def _export(model, out, *extra):
    """Run seg-export to ONNX; return (exit code, what it printed as its error)."""
    with pytest.raises(SystemExit) as e:
        seg_export.main(['--model', str(model), '--format', 'onnx', '--output', str(out),
                         *extra])
    return e.value.code


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_output_that_is_a_folder_or_below_a_file(tmp_path, tiny_model_file):
    (tmp_path / 'models').mkdir()
    (tmp_path / 'notes.txt').write_text('x')
    code = _export(tiny_model_file, tmp_path / 'models')
    assert code == f'seg-export: error: {tmp_path / "models"}: is a folder'
    below = tmp_path / 'notes.txt' / 'm.onnx'
    code = _export(tiny_model_file, below)
    assert code == f'seg-export: error: {below}: {tmp_path / "notes.txt"} is not a folder'
    assert _files(tmp_path) == ['models', 'notes.txt'] and _files(tmp_path / 'models') == []


def test_output_where_nothing_can_be_written(tiny_model_file):
    out = Path('/proc/seg_export_test.onnx')  # refused even to root
    code = _export(tiny_model_file, out)
    assert isinstance(code, str) and code.startswith(f'seg-export: error: {out}: ')
    assert '\n' not in code and not out.exists()


def test_sidecar_that_cannot_be_written_leaves_no_export(tmp_path, tiny_model_file):
    out = tmp_path / 'm.onnx'
    Path(f'{out}.json').mkdir()
    code = _export(tiny_model_file, out)
    assert code == f'seg-export: error: {out}.json: is a folder'
    assert _files(tmp_path) == ['m.onnx.json']  # the folder that was there, nothing else


@pytest.mark.parametrize('option, value, says', [
    ('--opset', '5', 'opset 5 is not one ERFNet exports to'),
    ('--opset', '99', 'opset 99 is not one ERFNet exports to'),
    ('--tolerance', 'nan', 'tolerance nan must be a finite number >= 0'),
    ('--tolerance', '-1', 'tolerance -1.0 must be a finite number >= 0'),
])
def test_options_out_of_range_are_usage_errors(tmp_path, tiny_model_file, capsys, option,
                                               value, says):
    assert _export(tiny_model_file, tmp_path / 'm.onnx', option, value) == 2
    assert f'argument {option}: {says}' in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_export_model_checks_its_arguments_too(tmp_path, tiny_model_file):
    with pytest.raises(ValueError, match=r'opset 6 .* choose 7\.\.'):
        seg_export.export_model(tiny_model_file, 'onnx', tmp_path / 'm.onnx', opset=6)
    with pytest.raises(ValueError, match='tolerance nan'):
        seg_export.export_model(tiny_model_file, 'onnx', tmp_path / 'm.onnx',
                                tolerance=float('nan'))
    assert _files(tmp_path) == []
