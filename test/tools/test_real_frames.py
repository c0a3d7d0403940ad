"""Real pixels: the bundled models on the bundled CamVid frames (samples/camvid, CC BY-NC 4.0)."""

from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from seg_perception.demo.real import class_map_for
from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_perception.resources import default_model_path, samples_root, synth_model_path
from seg_training.evaluation.seg_eval import evaluate_model_file
from seg_training.nets.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / 'test' / 'data' / 'recorded_labels'
FRAMES = sorted((ROOT / 'samples' / 'camvid' / 'test').glob('*.png'))
# mIoU of the default model on the four frames against their hand labels, measured when the
# labels were recorded: 0.596 (CPU, eager); the floor leaves room for other engines and CPUs.
DEFAULT_FLOOR = 0.55


def test_samples_are_the_four_real_frames_with_labels():
    assert samples_root() == ROOT / 'samples' / 'camvid'
    assert len(FRAMES) == 4
    for f in FRAMES:
        assert Image.open(f).size == (480, 360)
        labels = np.asarray(Image.open(f.parent.parent / 'testannot' / f.name))
        assert labels.shape == (360, 480) and labels.max() <= 11


@pytest.mark.parametrize('name', ['espnetv2_cityscapes', 'espnetv2_camvid', 'erfnet_synth'])
@pytest.mark.parametrize('accelerate', ['none', 'auto'])
def test_bundled_models_give_their_recorded_labels(name, accelerate):
    model, info = load_model(ROOT / 'models' / f'{name}.pt')
    pipe = SegmentationPipeline(model, info, device='cpu', accelerate=accelerate,
                                label_upsampling='nearest', warmup=False)
    for f in FRAMES:
        rgb = np.asarray(Image.open(f).convert('RGB'))
        got = pipe([Frame(rgb, 'rgb8')], Outputs(labels=True, color=False, overlay=False))[0]
        want = np.asarray(Image.open(RECORDED / name / f.name))
        agree = float((got.labels == want).mean())
        assert agree >= 0.995, f'{name} ({accelerate}) on {f.name}: {agree:.4f} of the labels'


def test_default_model_is_a_real_model_that_beats_a_floor_on_real_frames():
    path = default_model_path()
    assert path.name == 'espnetv2_cityscapes.pt'
    info = load_model(path)[1]
    assert info.provenance['real_images'] is True
    cmap = class_map_for(info.classes)
    assert cmap is not None and cmap.name == 'camvid_from_cityscapes.yaml'
    report = evaluate_model_file(path, 'camvid', samples_root(), 'test', device='cpu',
                                 batch_size=2, class_map=cmap)
    assert report['miou'] >= DEFAULT_FLOOR, report['per_class_iou']
    for name in ('road', 'sky', 'building', 'car'):
        assert report['per_class_iou'][name] >= 0.6, (name, report['per_class_iou'])
    synth = evaluate_model_file(synth_model_path(), 'camvid', samples_root(), 'test',
                                device='cpu', batch_size=2, class_map=cmap)
    assert synth['miou'] < report['miou'] - 0.2  # the synthetic model is no real-road model


def test_camvid_model_scores_camvid_frames_with_its_own_classes(tmp_path):
    from seg_perception.demo.real import segment_real_frames

    path = ROOT / 'models' / 'espnetv2_camvid.pt'
    info = load_model(path)[1]
    assert info.provenance['real_images'] is True
    assert 'CC BY-NC 4.0' in info.provenance['note']
    result = segment_real_frames(path, samples_root(), tmp_path / 'sheet.png')
    assert result['class_map'] is None  # CamVid's own classes
    assert result['miou'] >= 0.55  # 0.644 measured
