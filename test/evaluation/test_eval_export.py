"""seg-eval and seg-export on tiny model files and tiny datasets written by the tests."""

import functools
import json
import math
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import torch

from seg_training import export as seg_export
from seg_training.base.classes import (cityscapes_label_to_train_id, cityscapes_table, ClassTable,
                                       CUSTOM8)
from seg_training.evaluation import seg_eval
from seg_training.evaluation.metrics import ConfusionMatrix
from seg_training.nets.checkpoint import (build_model, load_model, ModelFileError, ModelInfo,
                                          Normalization, save_model)
from seg_training.nets.model import ERFNet, ERFNetConfig

ROOT = Path(__file__).resolve().parents[2]
W, H = 64, 32  # the tiny model's input size (conftest.tiny_model_file)


@functools.lru_cache(maxsize=4)
def _load(model_file):
    return load_model(model_file)


def _predict(model_file, rgb: np.ndarray) -> np.ndarray:
    """Argmax labels (H, W) of one RGB uint8 image at its own size, computed by hand."""
    model, info = _load(model_file)
    mean = np.asarray(info.normalization.mean, dtype=np.float32)
    std = np.asarray(info.normalization.std, dtype=np.float32)
    x = (rgb.astype(np.float32) / 255.0 - mean) / std  # (H, W, 3)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])  # (1, K, H, W)
    return logits[0].argmax(0).numpy()


def _numpy_ious(preds, gts, k):
    """Per-class IoU with plain numpy: NaN where a class is in neither prediction nor truth."""
    inter = np.zeros(k)
    union = np.zeros(k)
    for p, g in zip(preds, gts):
        valid = g != 255
        for c in range(k):
            inter[c] += np.sum((p == c) & (g == c) & valid)
            union[c] += np.sum(((p == c) | (g == c)) & valid)
    return [inter[c] / union[c] if union[c] else math.nan for c in range(k)]


def _folder_dataset(root: Path, model_file, classes: ClassTable, n: int = 3,
                    size=(W, H), seed: int = 0, split: str = 'val'):
    """Images, index masks (the model's own labels, 30% changed, a band ignored) and YAML."""
    rng = np.random.default_rng(seed)
    (root / 'images' / split).mkdir(parents=True)
    (root / 'masks' / split).mkdir(parents=True)
    lines = ['classes:'] + [f'  - {{name: {name}, color: {list(color)}}}'
                            for name, color in zip(classes.names, classes.colors)]
    (root / 'classes.yaml').write_text('\n'.join(lines + ['mask_format: index', '']))
    images, masks = [], []
    for i in range(n):
        rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        rgb[:, :size[0] // 2] //= 3  # a darker half gives the network some structure
        mask = _predict(model_file, rgb).astype(np.uint8) % classes.num_classes
        change = rng.random(mask.shape) < 0.3
        mask[change] = rng.integers(0, classes.num_classes, int(change.sum()))
        mask[:3] = 255
        Image.fromarray(rgb).save(root / 'images' / split / f'frame{i}.png')
        Image.fromarray(mask).save(root / 'masks' / split / f'frame{i}.png')
        images.append(rgb)
        masks.append(mask)
    return images, masks


def test_seg_eval_gives_the_miou_computed_directly(tmp_path, tiny_model_file):
    images, masks = _folder_dataset(tmp_path / 'data', tiny_model_file, CUSTOM8)
    out_json = tmp_path / 'eval' / 'eval.json'
    rc = seg_eval.main(['--model', str(tiny_model_file), '--dataset', 'folder',
                        '--data-root', str(tmp_path / 'data'), '--split', 'val',
                        '--json', str(out_json), '--plots', str(tmp_path / 'plots'),
                        '--device', 'cpu', '--batch-size', '2', '--workers', '0'])
    assert rc == 0
    report = json.loads(out_json.read_text())
    preds = [_predict(tiny_model_file, rgb) for rgb in images]
    ious = _numpy_ious(preds, masks, 8)
    expected = float(np.nanmean(ious))
    assert report['miou'] == pytest.approx(expected, abs=1e-9)
    assert 0.05 < report['miou'] < 0.95  # masks follow the predictions, 30% changed
    assert max(v for v in report['per_class_iou'].values() if v is not None) > 0.5
    assert list(report['per_class_iou']) == list(CUSTOM8.names)
    for name, iou in zip(CUSTOM8.names, ious):
        got = report['per_class_iou'][name]
        assert (got is None) if math.isnan(iou) else got == pytest.approx(iou, abs=1e-9)
    valid = sum(int((m != 255).sum()) for m in masks)
    correct = sum(int(((p == m) & (m != 255)).sum()) for p, m in zip(preds, masks))
    assert report['pixel_accuracy'] == pytest.approx(correct / valid)
    assert report['num_images'] == 3 and report['num_pixels'] == valid
    assert report['dataset'] == 'folder' and report['model'] == str(tiny_model_file)
    for key in ('mean_accuracy', 'fw_iou', 'mean_dice'):
        assert 0.0 < report[key] <= 1.0, key
    assert sorted(p.name for p in (tmp_path / 'plots').iterdir()) == [
        'confusion_matrix.png', 'per_class_iou.png']
    assert np.asarray(report['confusion_matrix']).sum() == valid


def test_seg_eval_on_a_full_disk_prints_the_report_and_fails(tmp_path, tiny_model_file,
                                                             monkeypatch, capsys):
    import errno

    _folder_dataset(tmp_path / 'data', tiny_model_file, CUSTOM8)
    out_json = tmp_path / 'eval.json'
    out_json.write_text('{"previous": true}')

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr('seg_training.base.files.os.fsync', no_space)
    rc = seg_eval.main(['--model', str(tiny_model_file), '--dataset', 'folder',
                        '--data-root', str(tmp_path / 'data'), '--split', 'val',
                        '--json', str(out_json), '--plots', str(tmp_path / 'plots'),
                        '--device', 'cpu', '--batch-size', '2', '--workers', '0'])
    out, err = capsys.readouterr()
    assert rc == 1
    shown = json.loads(out)  # the scores reach stdout all the same
    assert 0.0 <= shown['miou'] <= 1.0 and 'plots' not in shown
    assert 'no space left on device' in shown['plots_error']
    assert f'--json {out_json}: {out_json}: no space left on device' in err
    assert 'seg-eval: error: plots: ' in err and 'Traceback' not in err
    assert json.loads(out_json.read_text()) == {'previous': True}  # the old file is kept
    assert not list(tmp_path.glob('.eval.json.*'))  # and no temporary is left


def test_seg_eval_resizes_to_the_model_or_given_size(tmp_path, tiny_model_file):
    _folder_dataset(tmp_path / 'data', tiny_model_file, CUSTOM8, n=2, size=(128, 64))
    common = dict(model_path=tiny_model_file, dataset='folder', data_root=tmp_path / 'data',
                  device='cpu', batch_size=2, eval_size='network')
    native = seg_eval.evaluate_model_file(**common)
    assert native['input_size'] == [W, H] and native['eval_size'] == 'network'
    assert native['num_pixels'] <= 2 * W * H and native['num_pixels'] > 1.5 * W * H
    small = seg_eval.evaluate_model_file(**common, size=(32, 16))
    assert small['input_size'] == [32, 16] and small['num_pixels'] <= 2 * 32 * 16
    # the default scores at the labels' own size, whatever the network size
    common['eval_size'] = 'label'
    for size in (None, (32, 16)):
        full = seg_eval.evaluate_model_file(**common, size=size)
        assert full['eval_size'] == 'label' and full['label_sizes'] == [[128, 64]]
        assert 2 * 128 * 61 == full['num_pixels']  # 3 rows of each mask are ignored


@pytest.mark.timeout(300)
def test_seg_eval_reproduces_the_training_summary(tmp_path, tiny_model_file):
    data = tmp_path / 'data'
    _folder_dataset(data, tiny_model_file, CUSTOM8, n=4, size=(96, 48), split='train')
    _folder_dataset(data, tiny_model_file, CUSTOM8, n=2, size=(96, 48), seed=1)
    out = tmp_path / 'run'
    proc = subprocess.run([sys.executable, '-m', 'seg_training.training.loop',
                           '--dataset', 'folder', '--data-root', str(data), '--output-dir',
                           str(out), '--epochs', '1',
                           '--batch-size', '2', '--size', '64x32', '--workers', '0',
                           '--device', 'cpu', '--seed', '0'],
                          capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    report = seg_eval.evaluate_model_file(out / 'best.pt', 'folder', data, device='cpu',
                                          eval_size='network')  # as seg-train validates
    assert report['input_size'] == [64, 32]
    assert report['miou'] == pytest.approx(summary['best_val_miou'], abs=1e-9)
    assert report['per_class_iou'] == pytest.approx(summary['per_class_iou'], abs=1e-9)
    # the model file says what it was trained on
    prov = load_model(out / 'best.pt')[1].provenance
    assert [(d['role'], d['dataset'], d['split'], d['synthetic'], d['images'], d['image_sizes'])
            for d in prov['datasets']] == [('train', 'folder', 'train', False, 4, [[96, 48]]),
                                           ('val', 'folder', 'val', False, 2, [[96, 48]])]
    assert prov['real_images'] is True and prov['init'] is None
    assert prov['epochs'] == prov['best_epoch'] == 1
    assert prov['best_val_miou'] == pytest.approx(summary['best_val_miou'], abs=1e-12)


def test_seg_eval_names_both_class_lists_when_they_differ(tmp_path, tiny_model_file):
    other = ClassTable(('lane', 'curb', 'car'), ((255, 255, 255), (128, 128, 0), (0, 0, 142)))
    _folder_dataset(tmp_path / 'data', tiny_model_file, other, n=1)
    with pytest.raises(SystemExit) as err:
        seg_eval.main(['--model', str(tiny_model_file), '--dataset', 'folder',
                       '--data-root', str(tmp_path / 'data'), '--workers', '0'])
    message = str(err.value.code)
    assert "'lane', 'curb', 'car'" in message and "'road', 'sidewalk'" in message


def test_seg_eval_official_model_leaves_void_out(tmp_path):
    torch.manual_seed(3)
    net = ERFNet(ERFNetConfig(num_classes=20)).eval()
    with torch.no_grad():
        net.decoder.output_conv.bias[19] += 0.5  # void wins on some pixels
    official = tmp_path / 'erfnet_pretrained.pth'
    torch.save({f'module.{k}': v for k, v in net.state_dict().items()}, official)
    rng = np.random.default_rng(1)
    root = tmp_path / 'cityscapes'
    label_ids = np.array([7, 8, 11, 21, 23, 24, 26, 0, 4], dtype=np.uint8)  # some ignored
    preds, targets = [], []
    for i in range(2):
        (root / 'leftImg8bit' / 'val' / 'ulm').mkdir(parents=True, exist_ok=True)
        (root / 'gtFine' / 'val' / 'ulm').mkdir(parents=True, exist_ok=True)
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ids = label_ids[rng.integers(0, len(label_ids), (H // 4, W // 4))]
        gt = np.kron(ids, np.ones((4, 4), dtype=np.uint8))  # (H, W) labelIds
        stem = f'ulm_{i:06d}_000019'
        Image.fromarray(rgb).save(root / 'leftImg8bit' / 'val' / 'ulm' / f'{stem}_leftImg8bit.png')
        Image.fromarray(gt).save(root / 'gtFine' / 'val' / 'ulm' / f'{stem}_gtFine_labelIds.png')
        x = torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1) / 255.0)[None]
        with torch.no_grad():
            preds.append(net(x)[0].argmax(0))  # official model: [0, 1] inputs, no mean/std
        targets.append(torch.from_numpy(cityscapes_label_to_train_id()[gt].astype(np.int64)))
    assert any(bool((p == 19).any()) for p in preds)
    report = seg_eval.evaluate_model_file(official, 'cityscapes', root, size=(W, H),
                                          device='cpu')
    cm = ConfusionMatrix(20)
    for p, t in zip(preds, targets):
        cm.update(p, t)
    expected = cm.compute(void_index=19)
    assert report['model_format'] == 'erfnet_pretrained'
    assert list(report['per_class_iou']) == list(cityscapes_table().names)  # no 'void'
    assert report['miou'] == pytest.approx(expected['miou'], abs=1e-9)
    assert report['pixel_accuracy'] == pytest.approx(expected['pixel_accuracy'])


def test_seg_eval_command_reports_a_missing_dataset(tmp_path, tiny_model_file):
    missing = tmp_path / 'nowhere'
    proc = subprocess.run([sys.executable, '-m', 'seg_training.evaluation.seg_eval', '--model',
                           str(tiny_model_file), '--dataset', 'folder', '--data-root',
                           str(missing)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ))
    assert proc.returncode != 0
    assert 'seg-eval: error' in proc.stderr and str(missing) in proc.stderr


# --- seg-export -----------------------------------------------------------------------------

def _reference(model_file, x):
    model, _ = _load(model_file)
    with torch.no_grad():
        return model(x).numpy()


def _input(batch, w=W, h=H, seed=7):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _check_sidecar(path: Path, fmt: str, size, batch):
    side = json.loads(Path(f'{path}.json').read_text())
    assert side['format'] == fmt and side['file'] == path.name
    assert side['classes']['names'] == list(CUSTOM8.names)
    assert side['normalization'] == {'mean': [0.5] * 3, 'std': [0.25] * 3}
    assert side['input_size'] == list(size)
    assert side['resize'] == {'resize': 'area', 'antialias': False}  # the model file's own
    assert side['preprocess']['input_size'] == list(size)
    assert side['preprocess']['std'] == [0.25] * 3
    assert side['input']['name'] == 'image' and side['output']['name'] == 'logits'
    assert side['input']['shape'] == [batch, 3, size[1], size[0]]
    assert side['check']['max_abs_diff'] <= side['check']['tolerance']
    import hashlib
    assert side['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
    return side


def test_export_onnx_with_dynamic_batch_matches_pytorch(tmp_path, tiny_model_file):
    import onnx
    import onnxruntime as ort

    out = tmp_path / 'onnx' / 'tiny.onnx'
    res = seg_export.export_model(tiny_model_file, 'onnx', out, dynamic_batch=True, opset=17)
    assert res.path == out and res.check_batch == 2 and res.argmax_agreement == 1.0
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ['image']
    assert [o.name for o in graph.output] == ['logits']
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    x = _input(3)
    got = session.run(['logits'], {'image': x.numpy()})[0]
    ref = _reference(tiny_model_file, x)
    assert got.shape == (3, 8, H, W)
    assert np.abs(got - ref).max() < 1e-4
    side = _check_sidecar(out, 'onnx', (W, H), 'batch')
    assert side['opset'] == 17 and side['dynamic_batch'] is True
    assert sorted(p.name for p in out.parent.iterdir()) == ['tiny.onnx', 'tiny.onnx.json']


@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:DeprecationWarning')
def test_export_torchscript_command_matches_pytorch(tmp_path, tiny_model_file, capsys):
    out = tmp_path / 'tiny.torchscript'
    rc = seg_export.main(['--model', str(tiny_model_file), '--format', 'torchscript',
                          '--output', str(out), '--size', '32x16'])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['output'] == str(out) and printed['max_abs_diff'] <= 1e-3
    module = torch.jit.load(str(out))
    x = _input(1, 32, 16)
    with torch.no_grad():
        got = module(x).numpy()
    assert got.shape == (1, 8, 16, 32)
    assert np.abs(got - _reference(tiny_model_file, x)).max() < 1e-5
    _check_sidecar(out, 'torchscript', (32, 16), 1)


def test_export_over_tolerance_is_an_error_and_writes_nothing(tmp_path, tiny_model_file):
    out = tmp_path / 'bad.onnx'
    with pytest.raises(SystemExit) as err:
        seg_export.main(['--model', str(tiny_model_file), '--format', 'onnx', '--output',
                         str(out), '--tolerance', '0'])
    assert 'differs from PyTorch' in str(err.value.code)
    assert list(tmp_path.iterdir()) == []  # neither the export, its sidecar nor a temp file


def test_export_refuses_an_encoder_only_model(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(W, H), normalization=Normalization(),
                     encoder_only=True)
    path = tmp_path / 'encoder.pt'
    save_model(build_model(info), info, path)
    with pytest.raises(ModelFileError, match='encoder-only'):
        seg_export.export_model(path, 'torchscript', tmp_path / 'enc.torchscript')
    assert not (tmp_path / 'enc.torchscript').exists()


def test_seg_eval_of_an_encoder_only_model_at_label_size_is_refused(tmp_path, tiny_model_file):
    info = ModelInfo(classes=CUSTOM8, input_size=(W, H), normalization=Normalization(),
                     encoder_only=True)
    path = tmp_path / 'encoder.pt'
    save_model(build_model(info), info, path)
    _folder_dataset(tmp_path / 'data', tiny_model_file, CUSTOM8, n=1)
    with pytest.raises(seg_eval.EvalError, match='encoder-only.*--eval-size network'):
        seg_eval.evaluate_model_file(path, 'folder', tmp_path / 'data', device='cpu')
    report = seg_eval.evaluate_model_file(path, 'folder', tmp_path / 'data', device='cpu',
                                          eval_size='network')
    assert report['eval_size'] == 'network' and report['num_pixels'] > 0
