"""seg-predict on image files and folders, checked against a plain forward pass of the model."""

from pathlib import Path
import subprocess
import sys

import cv2
import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn

from seg_perception.predict import main
from seg_training.base.classes import cityscapes_table
from test_checkpoint import official_file, random_erfnet


@pytest.fixture(scope='module')
def official(tmp_path_factory):
    """Write a random 20-class ERFNet as the authors published theirs; return (path, model)."""
    def drop_counters(sd):  # the published file predates these buffers
        for k in [k for k in sd if k.endswith('num_batches_tracked')]:
            del sd[k]

    model = random_erfnet(20, seed=11)
    folder = tmp_path_factory.mktemp('official')
    return official_file(model, folder / 'erfnet_pretrained.pth', drop_counters), model


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    """Make an (H, W, 3) uint8 RGB blurred random field, closer to a photo than noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-20, 21, img.shape)
    return np.clip(img.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def reference_labels(model: nn.Module, rgb: np.ndarray, size) -> np.ndarray:
    """Label like the official code: PIL bilinear resize to the network size, [0, 1], argmax."""
    w, h = size
    pil = Image.fromarray(rgb)
    if pil.size != (w, h):
        pil = pil.resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        labels = model(x).argmax(1)[0].numpy().astype(np.uint8)  # (h, w)
    if labels.shape != rgb.shape[:2]:
        labels = cv2.resize(labels, (rgb.shape[1], rgb.shape[0]),
                            interpolation=cv2.INTER_NEAREST)
    return labels


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def seg_predict_command() -> list:
    script = Path(sys.executable).with_name('seg-predict')
    return [str(script)] if script.exists() else [sys.executable, '-m', 'seg_perception.predict']


def test_official_file_at_its_own_size_gives_the_reference_labels(tmp_path, official):
    path, model = official
    rgb = smooth_image(1024, 512, seed=1)
    Image.fromarray(rgb).save(tmp_path / 'exact.png')
    out = tmp_path / 'out'
    proc = subprocess.run(seg_predict_command() + ['--model', str(path), '--device', 'cpu',
                                                   '--output-dir', str(out),
                                                   str(tmp_path / 'exact.png')],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'network input 1024x512' in proc.stderr and 'erfnet_pretrained' in proc.stderr
    assert 'segmented 1 of 1 images' in proc.stdout

    # 1024x512 is the network size: no resize, so the labels are exactly the reference's.
    labels = read(out / 'exact_labels.png')
    assert labels.shape == (512, 1024) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, reference_labels(model, rgb, (1024, 512)))
    palette = np.array(cityscapes_table(with_void=True).colors, np.uint8)
    np.testing.assert_array_equal(read(out / 'exact_color.png')[..., ::-1], palette[labels])
    assert read(out / 'exact_overlay.png').shape == (512, 1024, 3)


def test_official_file_with_a_small_input_size(tmp_path, official):
    path, model = official
    sizes = [(64, 32), (128, 64), (96, 48), (50, 30)]
    images = {f'{w}x{h}': smooth_image(w, h, seed=w) for w, h in sizes}
    for name, rgb in images.items():
        cv2.imwrite(str(tmp_path / f'{name}.png'), rgb[..., ::-1])
    out = tmp_path / 'out'
    # Nearest label upsampling, as the reference enlarges its labels.
    rc = main(['--model', str(path), '--device', 'cpu', '--input-size', '64x32',
               '--label-upsampling', 'nearest', '--output-dir', str(out), str(tmp_path)])
    assert rc == 0
    # At the network size the labels are exact.
    np.testing.assert_array_equal(read(out / '64x32_labels.png'),
                                  reference_labels(model, images['64x32'], (64, 32)))
    # Resized images: PIL works in 8-bit steps, the pipeline in floats, so a pixel whose two
    # best classes are nearly tied may differ.
    for name, rgb in images.items():
        labels = read(out / f'{name}_labels.png')
        assert labels.shape == rgb.shape[:2]
        agreement = np.mean(labels == reference_labels(model, rgb, (64, 32)))
        assert agreement > 0.99, f'{name}: {agreement:.4f} of the pixels agree'


def test_gray_bgra_and_16_bit_images(tmp_path, tiny_model_file):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (40, 72), dtype=np.uint8)
    bgra = rng.integers(0, 256, (24, 48, 4), dtype=np.uint8)
    deep = (gray.astype(np.uint16) * 257)  # the same picture stored with 16 bits
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    cv2.imwrite(str(tmp_path / 'bgra.png'), bgra)
    cv2.imwrite(str(tmp_path / 'deep.png'), deep)
    out = tmp_path / 'out'
    rc = main(['--model', str(tiny_model_file), '--device', 'cpu', '--output-dir', str(out),
               '--alpha', '0.3', str(tmp_path)])
    assert rc == 0
    assert read(out / 'gray_labels.png').shape == (40, 72)
    assert read(out / 'gray_overlay.png').shape == (40, 72, 3)
    np.testing.assert_array_equal(read(out / 'deep_labels.png'), read(out / 'gray_labels.png'))
    overlay = read(out / 'bgra_overlay.png')
    assert overlay.shape == (24, 48, 4)
    np.testing.assert_array_equal(overlay[..., 3], bgra[..., 3])
    labels = read(out / 'bgra_labels.png')
    assert labels.shape == (24, 48) and labels.max() < 8


def test_alpha_zero_and_one(tmp_path, tiny_model_file):
    bgr = np.random.default_rng(5).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'frame.png'), bgr)
    for alpha in ('0', '1'):
        out = tmp_path / alpha
        assert main(['--model', str(tiny_model_file), '--device', 'cpu', '--alpha', alpha,
                     '--output-dir', str(out), str(tmp_path / 'frame.png')]) == 0
    np.testing.assert_array_equal(read(tmp_path / '0' / 'frame_overlay.png'), bgr)
    np.testing.assert_array_equal(read(tmp_path / '1' / 'frame_overlay.png'),
                                  read(tmp_path / '1' / 'frame_color.png'))


def test_folders_are_searched_recursively(tmp_path, tiny_model_file):
    src = tmp_path / 'drive'
    (src / 'cam' / 'left').mkdir(parents=True)
    img = np.random.default_rng(6).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(src / 'a.PNG'), img)
    cv2.imwrite(str(src / 'cam' / 'left' / 'a.jpg'), img)
    cv2.imwrite(str(src / 'cam' / 'b.bmp'), img)
    (src / 'notes.txt').write_text('not an image')
    out = tmp_path / 'out'
    assert main(['--model', str(tiny_model_file), '--device', 'cpu', '--output-dir', str(out),
                 str(src), str(src / 'a.PNG')]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob('*.png'))
    assert written == sorted(f'{stem}_{kind}.png' for stem in ('a', 'cam/b', 'cam/left/a')
                             for kind in ('color', 'labels', 'overlay'))


def test_unreadable_images_are_named_and_the_rest_is_done(tmp_path, tiny_model_file, caplog):
    good = np.random.default_rng(7).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'good.png'), good)
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG but not really')
    out = tmp_path / 'out'
    rc = main(['--model', str(tiny_model_file), '--device', 'cpu', '--output-dir', str(out),
               str(tmp_path / 'broken.png'), str(tmp_path / 'missing.jpg'),
               str(tmp_path / 'good.png')])
    assert rc == 1
    assert (out / 'good_labels.png').exists() and not (out / 'broken_labels.png').exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert any('broken.png: cannot be read as an image' in m for m in errors), errors
    assert any('missing.jpg: no such file or folder' in m for m in errors), errors


def test_same_stem_twice_is_refused_not_overwritten(tmp_path, tiny_model_file, caplog):
    img = np.zeros((32, 64, 3), np.uint8)
    (tmp_path / 'x').mkdir()
    cv2.imwrite(str(tmp_path / 'frame.png'), img)
    cv2.imwrite(str(tmp_path / 'x' / 'frame.jpg'), img)
    rc = main(['--model', str(tiny_model_file), '--device', 'cpu', '--output-dir',
               str(tmp_path / 'out'), str(tmp_path / 'frame.png'),
               str(tmp_path / 'x' / 'frame.jpg')])
    assert rc == 1
    assert any('would overwrite' in r.getMessage() and 'frame.jpg' in r.getMessage()
               for r in caplog.records)


def test_unusable_model_or_device_stops_with_status_2(tmp_path, tiny_model_file, caplog):
    cv2.imwrite(str(tmp_path / 'frame.png'), np.zeros((32, 64, 3), np.uint8))
    missing = tmp_path / 'nothing.pt'
    assert main(['--model', str(missing), str(tmp_path / 'frame.png')]) == 2
    assert any(f'{missing}: model file not found' in r.getMessage() for r in caplog.records)
    if not torch.cuda.is_available():
        assert main(['--model', str(tiny_model_file), '--device', 'cuda',
                     str(tmp_path / 'frame.png')]) == 2
        assert any('CUDA is not available' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('size', ['60x32', '64', '0x32'])
def test_bad_input_size_is_a_usage_error(tiny_model_file, size, capsys):
    with pytest.raises(SystemExit) as e:
        main(['--model', str(tiny_model_file), '--input-size', size, 'x.png'])
    assert e.value.code == 2
    assert size in capsys.readouterr().err


@pytest.mark.parametrize('alpha', ['1.5', '-0.1', 'nan'])
def test_alpha_outside_0_1_is_a_usage_error(tiny_model_file, capsys, alpha):
    with pytest.raises(SystemExit) as e:
        main(['--model', str(tiny_model_file), '--alpha', alpha, 'x.png'])
    assert e.value.code == 2
    assert f'argument --alpha: {alpha} is outside [0, 1]' in capsys.readouterr().err


def test_accelerate_option_runs_the_engine_asked_for(tmp_path, tiny_model_file, caplog):
    rgb = np.random.default_rng(9).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'frame.png'), rgb)
    labels = {}
    for accelerate in ('none', 'onnxruntime'):
        out = tmp_path / accelerate
        assert main(['--model', str(tiny_model_file), '--device', 'cpu', '--accelerate',
                     accelerate, '--output-dir', str(out), str(tmp_path / 'frame.png')]) == 0
        labels[accelerate] = read(out / 'frame_labels.png')
    assert np.mean(labels['none'] == labels['onnxruntime']) >= 0.999
    caplog.clear()
    assert main(['--model', str(tiny_model_file), '--device', 'cpu', '--accelerate',
                 'cuda_graphs', str(tmp_path / 'frame.png')]) == 2
    assert any('cuda_graphs needs a CUDA device' in r.getMessage() for r in caplog.records)
