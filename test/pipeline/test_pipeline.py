"""The ROS-free pipeline: exact labels for a network with hand-set weights, encodings, sizes."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_training.base.classes import ClassTable
from seg_training.base.cli import resolve_device
from seg_training.nets.checkpoint import load_model, ModelInfo
from seg_training.nets.model import ERFNet, ERFNetConfig

NET_W, NET_H = 64, 32
CUDA = torch.cuda.is_available()

# Five classes that depend on a pixel's colour (r, g, b in [0, 1]): logits = W @ rgb + b.
TABLE = ClassTable(names=('red', 'green', 'blue', 'bright', 'dark'),
                   colors=((200, 0, 0), (0, 200, 0), (0, 0, 200), (250, 250, 250), (40, 40, 40)))
W = np.array([[1.0, -0.5, -0.5],
              [-0.5, 1.0, -0.5],
              [-0.5, -0.5, 1.0],
              [1.0, 1.0, 1.0],
              [0.0, 0.0, 0.0]], dtype=np.float32)
B = np.array([0.0, 0.0, 0.0, -1.5, 0.4], dtype=np.float32)
# Block colours, each far from the decision boundaries of (W, B): resizing blends up to a quarter
# of a neighbouring cell into a cell's border pixels, and that changes no class.
COLORS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0),
                   (230, 20, 10), (20, 40, 230), (210, 210, 210), (40, 40, 40)], dtype=np.uint8)


def colour_net() -> ERFNet:
    """
    Build an ERFNet whose logits at (y, x) are W @ m + B, m = max of the RGB over its 8x8 cell.

    Every convolution is zeroed and every BN made the identity, so each residual block passes
    its input through; the downsamplers' max-pool branch carries the input colour to the last
    three encoder channels; both upsamplers copy those channels by nearest-neighbour 2x
    upsampling (transposed-conv taps (1, 1), (1, 2), (2, 1), (2, 2)); the output deconv applies W.
    """
    model = ERFNet(ERFNetConfig(num_classes=len(B)))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(math.sqrt(1.0 + m.eps))
        # Input RGB sits in channels 13..15 of 16, then 61..63 of 64, then 125..127 of 128.
        up1, up2 = model.decoder.layers[0], model.decoder.layers[3]
        for c in range(3):
            up1.conv.weight[125 + c, c, 1:, 1:] = 1.0
            up2.conv.weight[c, c, 1:, 1:] = 1.0
        head = model.decoder.output_conv  # weight (16, K, 2, 2)
        head.weight[:3] = torch.from_numpy(W.T.copy())[:, :, None, None]
        head.bias.copy_(torch.from_numpy(B))
    return model.eval()


def colour_pipeline(**kwargs) -> SegmentationPipeline:
    info = ModelInfo(classes=TABLE, input_size=(NET_W, NET_H))
    kwargs.setdefault('device', 'cpu')
    kwargs.setdefault('warmup', False)
    # Nearest label upsampling: camera-size labels are exact copies of the network's cells.
    kwargs.setdefault('label_upsampling', 'nearest')
    return SegmentationPipeline(colour_net(), info, **kwargs)


def block_image(width: int, height: int, cell: int, seed: int) -> np.ndarray:
    """Make an (H, W, 3) uint8 RGB image of cell x cell squares of COLORS; return it and ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(COLORS), (height // cell, width // cell))
    img = COLORS[ids].repeat(cell, 0).repeat(cell, 1)
    return np.ascontiguousarray(img), ids


def class_of(rgb: np.ndarray) -> np.ndarray:
    """Compute the class each uniform colour gets, (..., 3) uint8 -> (...) int."""
    return np.argmax(rgb.astype(np.float32) / 255.0 @ W.T + B, axis=-1)


@pytest.fixture(scope='module')
def pipe():
    return colour_pipeline()


def test_colour_classes_are_all_used():
    assert set(class_of(COLORS)) == set(range(len(B)))


def test_labels_exact_at_network_size(pipe):
    img, ids = block_image(NET_W, NET_H, 8, seed=0)
    (res,) = pipe([Frame(img, 'rgb8')])
    expected = class_of(COLORS[ids]).repeat(8, 0).repeat(8, 1)
    assert res.labels.shape == (NET_H, NET_W) and res.labels.dtype == np.uint8
    np.testing.assert_array_equal(res.labels, expected)
    np.testing.assert_array_equal(res.color, np.array(TABLE.colors, np.uint8)[expected])


def test_labels_follow_the_cell_maximum(pipe):
    # Within one 8x8 cell the network sees the per-channel maximum: a single red pixel on black
    # makes the whole cell red.
    img = np.zeros((NET_H, NET_W, 3), np.uint8)
    img[3, 13] = (255, 0, 0)  # cell (0, 1)
    (res,) = pipe([Frame(img, 'rgb8')])
    expected = np.full((NET_H // 8, NET_W // 8), TABLE.index('dark'))
    expected[0, 1] = TABLE.index('red')
    np.testing.assert_array_equal(res.labels, expected.repeat(8, 0).repeat(8, 1))


@pytest.mark.parametrize('encoding', ['bgr8', 'rgba8', 'bgra8'])
def test_channel_orders_give_the_same_labels(pipe, encoding):
    img, _ = block_image(NET_W, NET_H, 8, seed=1)
    (ref,) = pipe([Frame(img, 'rgb8')])
    other = img[..., ::-1] if encoding.startswith('bgr') else img
    if encoding.endswith('a8'):
        alpha = np.full(img.shape[:2] + (1,), 128, np.uint8)
        other = np.concatenate([other, alpha], axis=2)
    (res,) = pipe([Frame(np.ascontiguousarray(other), encoding)])
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert res.overlay_encoding == encoding


def test_mono8(pipe):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 2, (NET_H // 8, NET_W // 8))
    gray = np.array([30, 220], np.uint8)[ids].repeat(8, 0).repeat(8, 1)  # (H, W)
    (res,) = pipe([Frame(gray[..., None], 'mono8')], alpha=0.0)
    expected = np.where(ids == 1, TABLE.index('bright'), TABLE.index('dark'))
    np.testing.assert_array_equal(res.labels, expected.repeat(8, 0).repeat(8, 1))
    assert res.overlay_encoding == 'rgb8' and res.overlay.shape == (NET_H, NET_W, 3)
    np.testing.assert_array_equal(res.overlay, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize('encoding', ['rgba8', 'bgra8'])
def test_overlay_keeps_the_alpha_channel(pipe, encoding):
    img, _ = block_image(NET_W, NET_H, 8, seed=3)
    alpha = np.random.default_rng(4).integers(0, 256, (NET_H, NET_W, 1), dtype=np.uint8)
    (res,) = pipe([Frame(np.concatenate([img, alpha], axis=2), encoding)], alpha=0.7)
    assert res.overlay.shape == (NET_H, NET_W, 4)
    np.testing.assert_array_equal(res.overlay[..., 3:], alpha)


@pytest.mark.parametrize('cam_w, cam_h, cell', [(128, 64, 16), (32, 16, 4), (96, 48, 12),
                                                (160, 40, 20)])
def test_labels_come_back_at_camera_size(pipe, cam_w, cam_h, cell):
    # Cells map onto the network's 8x8 cells; resizing only blurs their borders a little.
    img, ids = block_image(cam_w, cam_h, cell, seed=cam_w)
    (res,) = pipe([Frame(img, 'rgb8')])
    assert res.labels.shape == (cam_h, cam_w)
    assert res.color.shape == (cam_h, cam_w, 3) and res.overlay.shape == (cam_h, cam_w, 3)
    np.testing.assert_array_equal(res.labels, class_of(COLORS[ids]).repeat(cell, 0)
                                  .repeat(cell, 1))


def test_batch_of_different_sizes_equals_single_frames(pipe):
    a, _ = block_image(NET_W, NET_H, 8, seed=5)
    b, _ = block_image(128, 64, 16, seed=6)
    c, _ = block_image(40, 24, 8, seed=7)
    frames = [Frame(a, 'rgb8'), Frame(np.ascontiguousarray(b[..., ::-1]), 'bgr8'),
              Frame(np.ascontiguousarray(c[..., :1]), 'mono8')]
    batch = pipe(frames)
    assert len(batch) == 3
    for frame, res in zip(frames, batch):
        (single,) = pipe([frame])
        for name in ('labels', 'color', 'overlay'):
            np.testing.assert_array_equal(getattr(res, name), getattr(single, name))


def test_batch_equals_single_with_random_weights(tiny_model_file):
    pipe = SegmentationPipeline.from_file(str(tiny_model_file), device='cpu', warmup=False)
    rng = np.random.default_rng(8)
    frames = [Frame(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8), 'rgb8'),
              Frame(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), 'bgr8')]
    batch = pipe.logits(frames)
    for i, frame in enumerate(frames):
        torch.testing.assert_close(batch[i:i + 1], pipe.logits([frame]), rtol=1e-4, atol=1e-4)


def test_normalisation_and_channel_order_match_a_plain_forward(tiny_model_file):
    model, info = load_model(tiny_model_file)
    img = np.random.default_rng(9).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W) RGB
    mean = torch.tensor(info.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.normalization.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model((x - mean) / std)  # (1, K, H, W)
    pipe = SegmentationPipeline(model, info, device='cpu', warmup=False)
    bgr = Frame(np.ascontiguousarray(img[..., ::-1]), 'bgr8')
    torch.testing.assert_close(pipe.logits([bgr]), ref, rtol=1e-4, atol=1e-4)
    (res,) = pipe([bgr])
    np.testing.assert_array_equal(res.labels, ref.argmax(1)[0].numpy())


def test_overlay_alpha_extremes(pipe):
    img, _ = block_image(NET_W, NET_H, 8, seed=10)
    bgr = np.ascontiguousarray(img[..., ::-1])
    (clear,) = pipe([Frame(bgr, 'bgr8')], alpha=0.0)
    np.testing.assert_array_equal(clear.overlay, bgr)
    (solid,) = pipe([Frame(bgr, 'bgr8')], alpha=1.0)
    np.testing.assert_array_equal(solid.overlay, solid.color[..., ::-1])
    (half,) = pipe([Frame(img, 'rgb8')], alpha=0.5)
    mix = (img.astype(np.float32) + half.color.astype(np.float32)) / 2
    assert np.abs(half.overlay.astype(np.float32) - mix).max() <= 0.5


def test_only_requested_outputs_are_made(pipe):
    img, _ = block_image(NET_W, NET_H, 8, seed=11)
    (res,) = pipe([Frame(img, 'rgb8')], Outputs(labels=True, color=False, overlay=False))
    assert res.labels is not None and res.color is None and res.overlay is None
    assert res.confidence is None
    assert pipe([]) == []


def test_confidence_is_the_softmax_maximum(pipe):
    img, ids = block_image(NET_W, NET_H, 8, seed=12)
    (res,) = pipe([Frame(img, 'rgb8')], Outputs(confidence=True))
    logits = COLORS[ids].astype(np.float32) / 255.0 @ W.T + B  # (h/8, w/8, K)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (p.max(-1) / p.sum(-1)).repeat(8, 0).repeat(8, 1)
    np.testing.assert_allclose(res.confidence, expected, atol=1e-4)


@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_reduced_precision_on_cpu(precision):
    pipe = colour_pipeline(precision=precision)
    assert next(pipe.model.parameters()).dtype == {'fp16': torch.float16,
                                                   'bf16': torch.bfloat16}[precision]
    img, ids = block_image(NET_W, NET_H, 8, seed=13)
    (res,) = pipe([Frame(img, 'rgb8')])
    np.testing.assert_array_equal(res.labels, class_of(COLORS[ids]).repeat(8, 0).repeat(8, 1))
    assert pipe.logits([Frame(img, 'rgb8')]).dtype == torch.float32


def test_input_size_override():
    pipe = colour_pipeline(input_size=(32, 16))
    img, ids = block_image(64, 32, 16, seed=14)
    (res,) = pipe([Frame(img, 'rgb8')])
    assert pipe.logits([Frame(img, 'rgb8')]).shape == (1, len(B), 16, 32)
    np.testing.assert_array_equal(res.labels, class_of(COLORS[ids]).repeat(16, 0).repeat(16, 1))


def test_bad_arguments_are_clear_errors(pipe):
    info = ModelInfo(classes=TABLE, input_size=(NET_W, NET_H))
    with pytest.raises(ValueError, match='precision'):
        SegmentationPipeline(colour_net(), info, device='cpu', precision='int8', warmup=False)
    with pytest.raises(ValueError, match='multiples of 8'):
        colour_pipeline(input_size=(60, 32))
    with pytest.raises(ValueError, match='encoder-only'):
        SegmentationPipeline(colour_net(), ModelInfo(classes=TABLE, input_size=(64, 32),
                                                     encoder_only=True), device='cpu')
    img, _ = block_image(NET_W, NET_H, 8, seed=15)
    with pytest.raises(ValueError, match='alpha'):
        pipe([Frame(img, 'rgb8')], alpha=1.5)
    with pytest.raises(ValueError, match='does not match encoding rgba8'):
        pipe([Frame(img, 'rgba8')])


@pytest.mark.skipif(CUDA, reason='checks the error raised when CUDA is missing')
def test_cuda_without_cuda_is_a_clear_error():
    assert resolve_device('auto') == torch.device('cpu')
    with pytest.raises(RuntimeError, match='CUDA is not available'):
        colour_pipeline(device='cuda')


@pytest.mark.skipif(not CUDA, reason='needs CUDA')
def test_cuda_channels_last_warmup_and_labels():
    pipe = colour_pipeline(device='cuda', warmup=True)
    assert torch.backends.cudnn.benchmark
    w = pipe.model.encoder.layers[1].conv3x1_1.weight
    assert w.is_cuda and w.is_contiguous(memory_format=torch.channels_last)
    assert pipe.warmup(1) > 0
    img, ids = block_image(96, 48, 12, seed=16)
    (res,) = pipe([Frame(img, 'rgb8')])
    np.testing.assert_array_equal(res.labels, class_of(COLORS[ids]).repeat(12, 0).repeat(12, 1))


@pytest.mark.skipif(not CUDA, reason='needs CUDA')
@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_cuda_reduced_precision(precision):
    pipe = colour_pipeline(device='cuda', precision=precision, warmup=True)
    img, ids = block_image(NET_W, NET_H, 8, seed=17)
    (res,) = pipe([Frame(img, 'rgb8')])
    np.testing.assert_array_equal(res.labels, class_of(COLORS[ids]).repeat(8, 0).repeat(8, 1))
