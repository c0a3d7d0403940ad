"""
Plots never cost a run its results.

Class names are drawn as written, and a plot that fails anyway is a warning naming it, after
summary.json and the report are written.
"""

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
import torch
import yaml

from seg_training.base.classes import ClassTable, CUSTOM8
from seg_training.evaluation import seg_eval as evaluate
from seg_training.evaluation.plots import plot_confusion, plot_per_class_iou
from seg_training.nets.checkpoint import build_model, ModelInfo, Normalization, save_model
from seg_training.training import loop as train
from training_data import write_folder

MATH = r'$\nonexistent$'  # mathtext that matplotlib cannot lay out
NAMES = (MATH, 'cost $5', *CUSTOM8.names[2:])
TINY = ['--size', '64x32', '--batch-size', '2', '--workers', '0', '--epochs', '1']


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _rename_classes(root: Path) -> None:
    doc = yaml.safe_load((root / 'classes.yaml').read_text())
    for entry, name in zip(doc['classes'], NAMES):
        entry['name'] = name
    (root / 'classes.yaml').write_text(yaml.safe_dump(doc))


def test_class_names_with_dollars_are_drawn_as_text(tmp_path):
    ious = [0.5, 0.25, *[0.1] * 6]
    assert _png(plot_per_class_iou(NAMES, ious, tmp_path / 'iou.png')).shape[0] > 100
    matrix = torch.randint(0, 50, (8, 8))
    assert _png(plot_confusion(matrix, NAMES, tmp_path / 'cm.png')).shape[0] > 100


def test_seg_train_with_such_names_writes_summary_and_plots(tmp_path, capsys):
    root = write_folder(tmp_path / 'data', n_train=2, n_val=2)
    _rename_classes(root)
    out = tmp_path / 'run'
    rc = train.main(['--dataset', 'folder', '--data-root', str(root), '--output-dir', str(out),
                     *TINY])
    assert rc == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert list(summary['per_class_iou'])[:2] == [MATH, 'cost $5']
    for name in ('curves', 'per_class_iou', 'confusion', 'samples'):
        assert (out / 'plots' / f'{name}.png').is_file(), name


def test_plots_that_cannot_be_written_are_warnings_after_the_summary(tmp_path, capsys, caplog):
    root = write_folder(tmp_path / 'data', n_train=2, n_val=2)
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'plots').write_text('a file where the plots folder would go')
    with caplog.at_level(logging.WARNING, logger='seg_training'):
        rc = train.main(['--dataset', 'folder', '--data-root', str(root), '--output-dir',
                         str(out), *TINY])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert json.loads((out / 'summary.json').read_text())['epochs'] == 1
    warned = {r.getMessage().split(' not plotted: ')[0] for r in caplog.records
              if ' not plotted: ' in r.getMessage()}
    assert warned == {str(out / 'plots' / f'{n}.png')
                      for n in ('curves', 'per_class_iou', 'confusion', 'samples')}
    assert train.main(['--output-dir', str(out), '--resume']) == 0
    assert 'finished after 1 of 1 epochs' in capsys.readouterr().out


def test_seg_eval_plots_with_such_names(tmp_path, capsys):
    classes = ClassTable(NAMES, CUSTOM8.colors)
    info = ModelInfo(classes=classes, input_size=(64, 32), normalization=Normalization())
    torch.manual_seed(0)
    save_model(build_model(info).eval(), info, tmp_path / 'm.pt')
    root = write_folder(tmp_path / 'data', n_train=1, n_val=2)
    _rename_classes(root)
    rc = evaluate.main(['--model', str(tmp_path / 'm.pt'), '--dataset', 'folder', '--data-root',
                        str(root), '--device', 'cpu', '--workers', '0', '--plots',
                        str(tmp_path / 'plots'), '--json', str(tmp_path / 'eval.json')])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    report = json.loads(out)
    assert list(report['per_class_iou'])[0] == MATH
    assert report['plots'] == [str(tmp_path / 'plots' / 'per_class_iou.png'),
                               str(tmp_path / 'plots' / 'confusion_matrix.png')]
    assert all(Path(p).is_file() for p in report['plots'])
    assert json.loads((tmp_path / 'eval.json').read_text())['miou'] == report['miou']
