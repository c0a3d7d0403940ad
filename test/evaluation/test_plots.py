"""Plots: each writes a readable PNG, draws what it was given and rejects bad input."""

import math

import numpy as np
from PIL import Image
import pytest
import torch

from seg_training.base.classes import CUSTOM8
from seg_training.evaluation.plots import (colorize, plot_confusion, plot_curves,
                                           plot_per_class_iou, plot_samples, read_csv_columns)


def _png(path):
    with Image.open(path) as im:
        assert im.format == 'PNG'
        return np.asarray(im.convert('RGB'))


def _only_png(folder, name):
    assert sorted(p.name for p in folder.iterdir() if p.suffix == '.png') == [name]


def test_plot_curves_draws_the_columns_the_csv_has(tmp_path):
    full = tmp_path / 'full.csv'
    full.write_text('epoch,train_loss,val_loss,val_miou,lr\n'
                    '1,2.0,1.9,0.10,0.0005\n2,1.5,1.6,0.25,0.0004\n3,1.1,,0.31,0.0003\n')
    out = plot_curves(full, tmp_path / 'plots' / 'curves.png')
    assert out == tmp_path / 'plots' / 'curves.png'
    wide = _png(out)
    _only_png(tmp_path / 'plots', 'curves.png')  # no temporary file left behind
    loss_only = tmp_path / 'loss.csv'
    loss_only.write_text('epoch,train_loss\n1,2.0\n2,1.0\n')
    narrow = _png(plot_curves(loss_only, tmp_path / 'loss.png'))
    assert wide.shape[1] > 2 * narrow.shape[1]  # three panels against one


def test_read_csv_columns_turns_blank_cells_into_nan(tmp_path):
    path = tmp_path / 'log.csv'
    path.write_text('epoch,val_loss\n1,0.5\n2,\n')
    cols = read_csv_columns(path)
    assert cols['epoch'] == [1.0, 2.0]
    assert cols['val_loss'][0] == 0.5 and math.isnan(cols['val_loss'][1])


def test_plot_curves_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.csv'):
        plot_curves(tmp_path / 'missing.csv', tmp_path / 'c.png')
    odd = tmp_path / 'odd.csv'
    odd.write_text('step,accuracy\n1,0.5\n')
    with pytest.raises(ValueError, match='odd.csv'):
        plot_curves(odd, tmp_path / 'c.png')
    empty = tmp_path / 'empty.csv'
    empty.write_text('epoch,train_loss\n')
    with pytest.raises(ValueError, match='no rows'):
        plot_curves(empty, tmp_path / 'c.png')
    assert not (tmp_path / 'c.png').exists()


def test_plot_per_class_iou_accepts_nan_and_none(tmp_path):
    ious = [0.9, math.nan, 0.5, None, 0.0, 0.7, 0.2, 0.4]
    img = _png(plot_per_class_iou(CUSTOM8.names, ious, tmp_path / 'iou.png'))
    assert img.shape[0] > 100 and img.shape[1] > 100
    with pytest.raises(ValueError, match='8 class names but 2'):
        plot_per_class_iou(CUSTOM8.names, [0.1, 0.2], tmp_path / 'bad.png')


def test_plot_confusion_handles_empty_rows_and_tensors(tmp_path):
    m = torch.randint(0, 1000, (8, 8))
    m[3] = 0  # a class absent from the ground truth
    img = _png(plot_confusion(m, CUSTOM8.names, tmp_path / 'cm.png'))
    assert img.shape[0] > 200
    with pytest.raises(ValueError, match='8 class names'):
        plot_confusion(np.zeros((3, 3)), CUSTOM8.names, tmp_path / 'bad.png')


def test_colorize_uses_the_palette_and_ignore_entry():
    palette = CUSTOM8.palette()
    labels = np.array([[0, 7], [255, 3]])
    rgb = colorize(labels, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == list(CUSTOM8.colors[7])
    assert rgb[1, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match='palette'):
        colorize(labels, palette[:10])


def test_plot_samples_shows_prediction_and_ground_truth_colours(tmp_path):
    h, w = 32, 64
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    pred = np.zeros((h, w), dtype=np.int64)
    pred[:, w // 2:] = CUSTOM8.index('vehicle')
    gt = np.full((h, w), CUSTOM8.index('vegetation'))
    gt[:4] = 255
    float_chw = torch.rand(3, h, w)  # float [0, 1] CHW images are accepted too
    out = plot_samples([image, float_chw], [pred, torch.from_numpy(pred)], [gt, gt],
                       CUSTOM8.palette(), tmp_path / 'samples.png', alpha=0.5)
    img = _png(out).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(img, axis=0).tolist()}
    for name in ('road', 'vehicle', 'vegetation'):
        assert tuple(CUSTOM8.colors[CUSTOM8.index(name)]) in colours, name
    road = np.array(CUSTOM8.colors[0])
    assert tuple(((0.5 * 200 + 0.5 * road) + 0.5).astype(int)) in colours  # the overlay blend
    with pytest.raises(ValueError, match='sizes differ'):
        plot_samples([image], [pred[:8]], [gt], CUSTOM8.palette(), tmp_path / 'bad.png')
    with pytest.raises(ValueError, match='equally many'):
        plot_samples([image], [pred, pred], [gt], CUSTOM8.palette(), tmp_path / 'bad.png')
