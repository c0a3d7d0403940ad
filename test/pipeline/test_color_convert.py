"""
yuv422 and Bayer frames: OpenCV and torch conversions agree, patterns are named as ROS names them.

The frames are made from RGB images (a seg-synth drive and random noise): yuv422 by the BT.601
matrix, Bayer by sampling each site's colour. The bundled model must label each encoding of a
drive frame as it labels the rgb8 frame.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seg_perception import color_convert
from seg_perception.color_convert import BAYER, from_rgb, to_rgb_numpy, to_rgb_tensor, YUV422
from seg_perception.image_codec import (CONVERTED, decode, ImageFormatError, overlay_encoding,
                                        RawImage)
from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_training.synth import render_frame

MODEL = Path(__file__).resolve().parents[2] / 'models' / 'erfnet_synth.pt'
CAMERA = (512, 256)  # (W, H) of the drive frame; the model's input is 256x128
# The most the torch path may differ from OpenCV's, per channel value (grey levels).
MAX_DIFF = 1


@pytest.fixture(scope='module')
def drive_rgb() -> np.ndarray:
    return render_frame(3, CAMERA, 'source')[0]  # (H, W, 3) uint8 RGB


def noise_rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)


def as_hwc(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float RGB tensor -> (H, W, 3) int array."""
    return t[0].permute(1, 2, 0).cpu().numpy().astype(np.int64)


@pytest.mark.parametrize('encoding', list(CONVERTED))
@pytest.mark.parametrize('image', ['drive', 'noise'])
def test_torch_conversion_matches_opencv(encoding, image, drive_rgb):
    rgb = drive_rgb if image == 'drive' else noise_rgb()
    raw = from_rgb(rgb, encoding)
    cv = to_rgb_numpy(raw, encoding).astype(np.int64)  # (H, W, 3)
    th = as_hwc(to_rgb_tensor(raw, encoding, torch.device('cpu'), backend='torch'))
    assert th.shape == cv.shape == rgb.shape
    diff = np.abs(th - cv)
    assert diff.max() <= MAX_DIFF, (encoding, image, diff.max(), np.argwhere(diff > MAX_DIFF)[:5])
    # the opencv backend is OpenCV's own conversion, unchanged
    np.testing.assert_array_equal(
        as_hwc(to_rgb_tensor(raw, encoding, torch.device('cpu'), backend='opencv')), cv)


@pytest.mark.parametrize('encoding', list(BAYER))
def test_bayer_patterns_are_named_as_ros_names_them(encoding):
    # R at row 0 column 0 is bayer_rggb8; OpenCV calls that pattern BG. A uniform colour comes
    # back exactly only through the matching OpenCV code and the matching torch pattern.
    rgb = np.empty((8, 10, 3), dtype=np.uint8)
    rgb[...] = (200, 100, 30)
    mosaic = from_rgb(rgb, encoding)[:, :, 0]  # (H, W)
    colour = {'R': 200, 'G': 100, 'B': 30}
    for i, c in enumerate(BAYER[encoding]):
        assert mosaic[i // 2, i % 2] == colour[c]
    np.testing.assert_array_equal(to_rgb_numpy(mosaic, encoding), rgb)
    np.testing.assert_array_equal(
        as_hwc(to_rgb_tensor(mosaic, encoding, torch.device('cpu'), backend='torch')), rgb)
    for other in set(BAYER) - {encoding}:
        assert not np.array_equal(to_rgb_numpy(mosaic, other), rgb), other
        wrong = as_hwc(to_rgb_tensor(mosaic, other, torch.device('cpu'), backend='torch'))
        assert not np.array_equal(wrong, rgb), other


@pytest.mark.parametrize('encoding, code', [('yuv422', 'COLOR_RGB2YUV_UYVY'),
                                            ('yuv422_yuy2', 'COLOR_RGB2YUV_YUY2')])
def test_yuv422_layout_matches_opencv(encoding, code, drive_rgb):
    if not hasattr(cv2, code):
        pytest.skip(f'this OpenCV has no {code}')
    ours = from_rgb(drive_rgb, encoding).astype(np.int64)  # (H, W, 2)
    theirs = cv2.cvtColor(drive_rgb, getattr(cv2, code)).astype(np.int64)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1  # same byte order, same matrix


@pytest.mark.parametrize('encoding', list(YUV422))
def test_yuv422_round_trip_keeps_the_picture(encoding, drive_rgb):
    back = to_rgb_numpy(from_rgb(drive_rgb, encoding), encoding).astype(np.int64)
    # only chroma subsampling and rounding are lost
    assert np.abs(back - drive_rgb).mean() < 2.0


@pytest.mark.parametrize('encoding', list(CONVERTED))
def test_padded_read_only_message_bytes(encoding, drive_rgb):
    rgb = drive_rgb[:20, :30]
    raw = from_rgb(np.ascontiguousarray(rgb), encoding)  # (H, W, C)
    h, w, c = raw.shape
    step = w * c + 6  # row padding, as drivers add for alignment
    rows = np.full((h, step), 77, dtype=np.uint8)
    rows[:, :w * c] = raw.reshape(h, -1)
    data = rows.tobytes()  # read-only, as rclpy's and rosbags' message buffers are
    view = decode(RawImage(encoding, h, w, step, data))
    assert view.shape == (h, w, c) and np.shares_memory(view, np.frombuffer(data, np.uint8))
    want = to_rgb_numpy(raw, encoding)
    np.testing.assert_array_equal(to_rgb_numpy(view, encoding), want)
    got = as_hwc(to_rgb_tensor(view, encoding, torch.device('cpu'), backend='torch'))
    assert np.abs(got - want).max() <= MAX_DIFF


def test_bad_frames_and_options_are_refused_by_name():
    with pytest.raises(ImageFormatError, match='width=5'):
        to_rgb_numpy(np.zeros((2, 5, 2), np.uint8), 'yuv422')
    with pytest.raises(ImageFormatError, match='height=3'):
        to_rgb_numpy(np.zeros((3, 4, 1), np.uint8), 'bayer_rggb8')
    with pytest.raises(ImageFormatError, match=r'\(H, W, 2\)'):
        to_rgb_numpy(np.zeros((2, 4, 3), np.uint8), 'yuv422_yuy2')
    with pytest.raises(ImageFormatError, match="'rgb8' is not converted"):
        to_rgb_numpy(np.zeros((2, 4, 3), np.uint8), 'rgb8')
    with pytest.raises(ImageFormatError, match='width=3'):
        from_rgb(np.zeros((2, 3, 3), np.uint8), 'bayer_gbrg8')
    with pytest.raises(ValueError, match="backend 'cuda'"):
        to_rgb_tensor(np.zeros((2, 4, 2), np.uint8), 'yuv422', torch.device('cpu'), 'cuda')


def test_every_converted_encoding_has_an_opencv_code_and_rgb8_overlay():
    assert set(color_convert.YUV422) | set(color_convert.BAYER) == set(CONVERTED)
    assert {overlay_encoding(e) for e in CONVERTED} == {'rgb8'}


@pytest.fixture(scope='module')
def synth_pipeline() -> SegmentationPipeline:
    return SegmentationPipeline.from_file(MODEL, device='cpu', warmup=False)


@pytest.mark.parametrize('encoding', list(CONVERTED))
def test_labels_of_each_encoding_match_the_rgb8_frame(encoding, synth_pipeline, drive_rgb):
    outputs = Outputs(labels=True, color=False, overlay=True)
    want = synth_pipeline([Frame(drive_rgb, 'rgb8')], outputs)[0]
    got = synth_pipeline([Frame(from_rgb(drive_rgb, encoding), encoding)], outputs)[0]
    assert got.labels.shape == drive_rgb.shape[:2]
    same = float((got.labels == want.labels).mean())
    assert same >= 0.95, f'{encoding}: {same:.3f} of the labels equal the rgb8 frame\'s'
    assert got.overlay_encoding == 'rgb8' and got.overlay.shape == drive_rgb.shape
    # the overlay's base picture is the converted frame, not the raw bytes
    assert np.abs(got.overlay.astype(np.int64) - want.overlay).mean() < 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('encoding', list(CONVERTED))
def test_cuda_conversion_and_labels(encoding, drive_rgb):
    raw = from_rgb(drive_rgb, encoding)
    got = as_hwc(to_rgb_tensor(raw, encoding, torch.device('cuda')))  # auto: torch on the GPU
    assert np.abs(got - to_rgb_numpy(raw, encoding)).max() <= MAX_DIFF
    pipeline = SegmentationPipeline.from_file(MODEL, device='cuda', warmup=False)
    want = pipeline([Frame(drive_rgb, 'rgb8')], Outputs(color=False, overlay=False))[0]
    labels = pipeline([Frame(raw, encoding)], Outputs(color=False, overlay=False))[0].labels
    assert float((labels == want.labels).mean()) >= 0.95
