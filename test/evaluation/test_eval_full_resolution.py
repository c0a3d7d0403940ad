"""seg-eval at the labels' own size: seg-predict's labels, scored as the Cityscapes evaluator."""

import json
import math
from pathlib import Path

from cityscapesscripts.helpers.labels import labels as cs_labels
import cv2
import numpy as np
from PIL import Image
import pytest
import torch

from seg_perception.pipeline import Frame, SegmentationPipeline
from seg_perception.predict import main as seg_predict
from seg_training.base.classes import cityscapes_label_to_train_id, cityscapes_table
from seg_training.datasets.build import build_dataset
from seg_training.evaluation import seg_eval
from seg_training.evaluation.metrics import cityscapes_evaluator, ConfusionMatrix
from seg_training.nets.checkpoint import build_model, ModelInfo, Normalization, save_model

SIZE = (200, 100)  # the label resolution (W, H); the network runs at 64x32
STEMS = ('ulm_000000_000019', 'ulm_000001_000019', 'ulm_000002_000019')


def _train_to_label_id() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # 255 (nothing predicted) -> 'unlabeled'
    for lb in cs_labels:
        if 0 <= lb.trainId < 19 and not lb.ignoreInEval:
            lut[lb.trainId] = lb.id
    return lut


@pytest.fixture(scope='module')
def city(tmp_path_factory):
    """Return (model file, dataset root): a 19-class model and frames labelled near its output."""
    root = tmp_path_factory.mktemp('city')
    torch.manual_seed(5)
    info = ModelInfo(classes=cityscapes_table(), input_size=(64, 32),
                     normalization=Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    model = build_model(info).eval()
    with torch.no_grad():  # spread the random network's argmax over more classes
        model.decoder.output_conv.weight.mul_(20.0)
    model_file = root / 'city19.pt'
    save_model(model, info, model_file)
    pipe = SegmentationPipeline(model, info, device='cpu', warmup=False)
    rng = np.random.default_rng(2)
    to_label = _train_to_label_id()
    label_ids = np.array([lb.id for lb in cs_labels if lb.id >= 0], dtype=np.uint8)
    img_dir = root / 'leftImg8bit' / 'val' / 'ulm'
    gt_dir = root / 'gtFine' / 'val' / 'ulm'
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    w, h = SIZE
    for i, stem in enumerate(STEMS):
        coarse = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
        rgb = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        labels = pipe([Frame(rgb)])[0].labels  # (H, W) train ids at the label size
        gt = to_label[labels]
        noise = rng.random(gt.shape) < 0.2
        gt[noise] = rng.choice(label_ids, int(noise.sum()))  # ignored ids included
        Image.fromarray(rgb).save(img_dir / f'{stem}_leftImg8bit.png')
        Image.fromarray(gt).save(gt_dir / f'{stem}_gtFine_labelIds.png')
    return model_file, root


def _seg_predict_labels(model_file: Path, root: Path, out: Path) -> dict:
    assert seg_predict(['--model', str(model_file), '--device', 'cpu', '--output-dir', str(out),
                        str(root / 'leftImg8bit' / 'val')]) == 0
    return {stem: cv2.imread(str(out / 'ulm' / f'{stem}_leftImg8bit_labels.png'),
                             cv2.IMREAD_UNCHANGED) for stem in STEMS}


def test_seg_eval_predictions_are_seg_predict_labels(tmp_path, city):
    model_file, root = city
    predicted = _seg_predict_labels(model_file, root, tmp_path / 'out')
    pipe = SegmentationPipeline.from_file(model_file, device='cpu', warmup=False)
    ds = build_dataset('cityscapes', root, 'val')
    seen = 0
    for index, labels, mask in seg_eval.iter_label_predictions(pipe, ds, batch_size=2):
        stem = ds.samples[index][0].name[:-len('_leftImg8bit.png')]
        assert labels.shape == mask.shape == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(labels, predicted[stem])
        seen += 1
    assert seen == len(STEMS)


def _official(root: Path, results: Path) -> dict:
    gts = sorted(str(p) for p in (root / 'gtFine' / 'val').glob('*/*_gtFine_labelIds.png'))
    assert len(gts) == len(STEMS)
    return cityscapes_evaluator(gts, str(results))


def test_seg_eval_at_full_resolution_agrees_with_the_cityscapes_evaluator(tmp_path, city):
    model_file, root = city
    out_json = tmp_path / 'eval.json'
    assert seg_eval.main(['--model', str(model_file), '--dataset', 'cityscapes', '--data-root',
                          str(root), '--device', 'cpu', '--workers', '0', '--json',
                          str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report['eval_size'] == 'label' and report['label_sizes'] == [list(SIZE)]
    assert report['input_size'] == [64, 32] and 'SegmentationPipeline' in report['method']
    assert report['preprocess']['resize'] == 'area'

    # the official evaluator on seg-predict's labels, written as Cityscapes labelIds
    predicted = _seg_predict_labels(model_file, root, tmp_path / 'out')
    results = tmp_path / 'results'
    results.mkdir()
    to_label = _train_to_label_id()
    for stem, labels in predicted.items():
        Image.fromarray(to_label[labels]).save(results / f'{stem}_pred.png')
    official = _official(root, results)
    assert report['miou'] == pytest.approx(official['averageScoreClasses'], abs=1e-6)
    for name, iou in report['per_class_iou'].items():
        ref = official['classScores'][name]
        if iou is None:
            assert ref is None or math.isnan(ref), name
        else:
            assert iou == pytest.approx(ref, abs=1e-6), name
    assert 0.2 < report['miou'] < 0.95  # labels follow the predictions, 20% changed
    assert report['num_pixels'] < len(STEMS) * SIZE[0] * SIZE[1]  # ignored ids left out

    # and the same number from seg-predict's labels with our confusion matrix
    cm = ConfusionMatrix(19)
    lut = cityscapes_label_to_train_id()
    for stem, labels in predicted.items():
        gt_file = root / 'gtFine' / 'val' / 'ulm' / f'{stem}_gtFine_labelIds.png'
        gt = np.asarray(Image.open(gt_file))
        cm.update(torch.from_numpy(labels), torch.from_numpy(lut[gt]))
    assert report['miou'] == cm.compute()['miou']

    # --eval-size network scores something else: 64x32 predictions against resized masks
    net = seg_eval.evaluate_model_file(model_file, 'cityscapes', root, device='cpu',
                                       eval_size='network')
    assert net['eval_size'] == 'network' and net['num_pixels'] <= len(STEMS) * 64 * 32
    assert net['miou'] != report['miou']
