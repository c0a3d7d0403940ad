"""The ONNX example of docs/evaluation_export.md, run as written, gives seg-predict's labels."""

from pathlib import Path
import re

import cv2
import numpy as np
import pytest

from seg_perception.predict import main as seg_predict
from seg_training.export import export_model

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / 'docs' / 'evaluation_export.md'


def readme_snippet() -> str:
    """Return the Python block between the onnx-example markers of the export docs."""
    text = PAGE.read_text(encoding='utf-8')
    m = re.search(r'<!-- onnx-example:start -->\s*```python\n(.*?)```\s*<!-- onnx-example:end -->',
                  text, re.S)
    assert m, f'{PAGE.relative_to(ROOT)} lost its onnx-example markers'
    return m.group(1)


def street_like(width: int, height: int, seed: int) -> np.ndarray:
    """Make a smooth BGR image with some edges (closer to a photo than noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 6 + 1, width // 6 + 1, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img[height // 2:, :, :] //= 2  # a darker lower half, like a road
    return img


@pytest.mark.parametrize('size', [(100, 50), (120, 50), (48, 24)],
                         ids=['shrink-area', 'shrink-uneven', 'enlarge'])
def test_readme_onnx_example_matches_seg_predict(tmp_path, tiny_model_file, monkeypatch, size):
    export_model(tiny_model_file, 'onnx', tmp_path / 'best.onnx')
    w, h = size
    cv2.imwrite(str(tmp_path / 'frame.png'), street_like(w, h, seed=w))
    assert seg_predict(['--model', str(tiny_model_file), '--device', 'cpu', '--output-dir',
                        str(tmp_path / 'out'), str(tmp_path / 'frame.png')]) == 0
    expected = cv2.imread(str(tmp_path / 'out' / 'frame_labels.png'), cv2.IMREAD_UNCHANGED)

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_snippet(), 'docs/evaluation_export.md onnx example', 'exec'), scope)
    labels = scope['labels']
    assert labels.shape == (h, w) == expected.shape
    assert len(np.unique(expected)) > 1  # the image is not one class
    np.testing.assert_array_equal(labels, expected)
    assert scope['names'][0] == 'road'
