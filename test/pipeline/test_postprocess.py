"""Camera-size work around the network: label upsampling, output scale, stage timing, CUDA path."""

import cv2
import numpy as np
import pytest
import torch
from test_pipeline import block_image, colour_pipeline, NET_H, NET_W

from seg_perception import image_codec
from seg_perception.pipeline import Frame, Outputs
from seg_perception.postprocess import cpu_area_input, label_grid, resolve_label_upsampling
from seg_perception.timing import NO_TIMER, StageTimer
from seg_training.nets.preprocess import Resize

CUDA = torch.cuda.is_available()
ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')


def encoded(img: np.ndarray, encoding: str, seed: int = 0) -> np.ndarray:
    """Return the RGB block image in ``encoding`` (random alpha for the 4-channel ones)."""
    if encoding == 'mono8':
        return np.ascontiguousarray(img[..., :1])
    out = img[..., ::-1] if encoding.startswith('bgr') else img
    if encoding.endswith('a8'):
        alpha = np.random.default_rng(seed).integers(0, 256, img.shape[:2] + (1,), np.uint8)
        out = np.concatenate([out, alpha], axis=2)
    return np.ascontiguousarray(out)


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Distance in px from each pixel to the nearest pixel whose 4-neighbour has another class."""
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)


def test_auto_and_grids():
    assert resolve_label_upsampling('auto', torch.device('cpu')) == 'bilinear_x2'
    assert resolve_label_upsampling('auto', torch.device('cuda')) == 'bilinear'
    assert resolve_label_upsampling('nearest', torch.device('cuda')) == 'nearest'
    with pytest.raises(ValueError, match='label_upsampling'):
        resolve_label_upsampling('cubic', torch.device('cpu'))
    net, cam = (128, 256), (1024, 2048)
    assert label_grid('nearest', net, cam) == net
    assert label_grid('bilinear', net, cam) == cam
    assert label_grid('bilinear_x2', net, cam) == (256, 512)
    assert label_grid('bilinear_x4', net, (300, 2048)) == (300, 1024)  # never above the camera


@pytest.mark.parametrize('shape,size,encoding', [((1024, 2048, 3), (128, 256), 'rgb8'),
                                                 ((256, 512, 4), (32, 64), 'bgra8'),
                                                 ((512, 1024, 3), (32, 64), 'bgr8'),
                                                 ((96, 128, 1), (32, 64), 'mono8')])
def test_cpu_area_shrink_is_the_model_preprocessing_bit_for_bit(shape, size, encoding):
    img = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
    ours = cpu_area_input(img, encoding, size, 'area')  # (h, w, 3) float32 RGB
    rgb = torch.from_numpy(img).permute(2, 0, 1)[None].float()  # (1, C, H, W)
    ref = Resize('area').apply(rgb, size[::-1])[0].permute(1, 2, 0).numpy()
    ref = ref[..., list(image_codec.ENCODINGS[encoding][1])]
    assert ours.shape == size + (3,) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    assert cpu_area_input(img, encoding, size, 'bilinear') is None  # another resize
    assert cpu_area_input(img, encoding, (size[0] + 8, size[1]), 'area') is None  # not whole


@pytest.mark.parametrize('mode', ['bilinear', 'bilinear_x2'])
def test_bilinear_labels_differ_from_nearest_only_near_class_boundaries(mode):
    cam_w, cam_h = 4 * NET_W, 4 * NET_H  # a network output pixel is 4x4 camera pixels
    img, _ = block_image(cam_w, cam_h, 32, seed=21)  # cells of 8x8 network pixels
    frame = Frame(img, 'rgb8')
    (near,) = colour_pipeline()([frame], Outputs(overlay=False))
    (bil,) = colour_pipeline(label_upsampling=mode)([frame], Outputs(overlay=False))
    assert bil.labels.shape == near.labels.shape == (cam_h, cam_w)
    differ = bil.labels != near.labels
    dist = boundary_distance(near.labels)
    # Bilinear logits mix a network pixel with its neighbours: within 1.5 of them of a boundary.
    assert differ.any(), 'bilinear labels should round the corners of the class regions'
    assert dist[differ].max() <= 6.0, dist[differ].max()
    np.testing.assert_array_equal(bil.labels[dist > 6.0], near.labels[dist > 6.0])
    assert differ.mean() < 0.05
    np.testing.assert_array_equal(bil.color, colour_pipeline().info.classes.palette()[bil.labels])


def test_output_scale_shrinks_colour_and_overlay_only():
    pipe = colour_pipeline(label_upsampling='bilinear')
    img, _ = block_image(128, 64, 16, seed=22)
    frame = Frame(np.ascontiguousarray(img[..., ::-1]), 'bgr8')
    (full,) = pipe([frame], Outputs(confidence=True))
    (half,) = pipe([frame], Outputs(confidence=True), output_scale=0.5)
    assert half.labels.shape == (64, 128) and half.confidence.shape == (64, 128)
    assert half.color.shape == (32, 64, 3) and half.overlay.shape == (32, 64, 3)
    np.testing.assert_array_equal(half.labels, full.labels)
    np.testing.assert_array_equal(half.color, full.color[::2, ::2])
    # The overlay blends the frame shrunk by area averaging with those colours.
    base = cv2.resize(frame.image, (64, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    mix = (base + half.color[..., ::-1].astype(np.float32)) / 2
    assert np.abs(half.overlay.astype(np.float32) - mix).max() <= 0.5
    with pytest.raises(ValueError, match='output scale'):
        pipe([frame], output_scale=0.0)


def test_stage_timer_sees_every_stage_and_changes_nothing():
    pipe = colour_pipeline()
    img, _ = block_image(128, 64, 16, seed=23)
    frame = Frame(img, 'rgb8')
    timer = StageTimer()
    for _ in range(3):
        (timed,) = pipe([frame], Outputs(confidence=True), timer=timer)
        timer.next()
    (plain,) = pipe([frame], Outputs(confidence=True), timer=NO_TIMER)
    for name in ('labels', 'color', 'overlay', 'confidence'):
        np.testing.assert_array_equal(getattr(timed, name), getattr(plain, name))
    summary = timer.summary()
    assert list(summary) == ['upload', 'resize', 'forward', 'labels', 'confidence', 'color',
                             'overlay']
    assert all(s['n'] == 3 and 0 <= s['p50_ms'] <= s['p99_ms'] for s in summary.values())
    assert summary['forward']['p50_ms'] > 0


# --- CUDA (skipped without it) ---------------------------------------------------------------

@pytest.mark.skipif(not CUDA, reason='needs CUDA')
@pytest.mark.parametrize('encoding', ENCODINGS)
@pytest.mark.parametrize('mode', ['nearest', 'bilinear'])
def test_cuda_outputs_equal_the_cpu_ones(encoding, mode):
    # At the network's own size no resize happens, so both devices see the same input.
    img, _ = block_image(NET_W, NET_H, 8, seed=24)
    frame = Frame(encoded(img, encoding), encoding)
    outputs = Outputs(confidence=True)
    (cpu,) = colour_pipeline(label_upsampling=mode)([frame], outputs, alpha=0.3)
    (gpu,) = colour_pipeline(device='cuda', label_upsampling=mode)([frame], outputs, alpha=0.3)
    np.testing.assert_array_equal(gpu.labels, cpu.labels)
    np.testing.assert_array_equal(gpu.color, cpu.color)
    assert gpu.overlay.shape == cpu.overlay.shape and gpu.overlay_encoding == cpu.overlay_encoding
    assert np.abs(gpu.overlay.astype(np.int16) - cpu.overlay.astype(np.int16)).max() <= 1
    if encoding.endswith('a8'):
        np.testing.assert_array_equal(gpu.overlay[..., 3], frame.image[..., 3])
    assert gpu.confidence.dtype == np.float32
    np.testing.assert_allclose(gpu.confidence, cpu.confidence, atol=1e-4)
    # Smaller colour and overlay: the frame is area-averaged on both devices.
    (cpu,) = colour_pipeline(label_upsampling=mode)([frame], alpha=0.3, output_scale=0.5)
    (gpu,) = colour_pipeline(device='cuda', label_upsampling=mode)([frame], alpha=0.3,
                                                                   output_scale=0.5)
    np.testing.assert_array_equal(gpu.color, cpu.color)
    assert np.abs(gpu.overlay.astype(np.int16) - cpu.overlay.astype(np.int16)).max() <= 1


@pytest.mark.skipif(not CUDA, reason='needs CUDA')
def test_cuda_bilinear_labels_at_camera_size_agree_with_the_cpu():
    img, _ = block_image(4 * NET_W, 4 * NET_H, 32, seed=25)
    frame = Frame(img, 'rgb8')
    (cpu,) = colour_pipeline(label_upsampling='bilinear')([frame], Outputs(overlay=False))
    gpu_pipe = colour_pipeline(device='cuda')  # auto is bilinear on CUDA
    assert gpu_pipe.label_upsampling == 'bilinear'
    (gpu,) = gpu_pipe([frame], Outputs(overlay=False))
    assert gpu.labels.shape == cpu.labels.shape
    assert (gpu.labels == cpu.labels).mean() > 0.995


@pytest.mark.skipif(not CUDA, reason='needs CUDA')
def test_cuda_batch_results_stay_valid_and_equal_single_frames():
    pipe = colour_pipeline(device='cuda')
    a, _ = block_image(128, 64, 16, seed=26)
    b, _ = block_image(96, 48, 12, seed=27)
    frames = [Frame(a, 'rgb8'), Frame(encoded(b, 'bgra8'), 'bgra8')]
    batch = pipe(frames, Outputs(confidence=True), output_scale=0.5)
    kept = [{n: getattr(r, n).copy() for n in ('labels', 'color', 'overlay', 'confidence')}
            for r in batch]
    for i, frame in enumerate(frames):
        (single,) = pipe([frame], Outputs(confidence=True), output_scale=0.5)
        for name, value in kept[i].items():
            # Results of earlier calls are not overwritten by later ones (pinned buffers).
            np.testing.assert_array_equal(getattr(batch[i], name), value)
            np.testing.assert_array_equal(getattr(single, name), value)
    assert batch[1].overlay.shape == (24, 48, 4) and batch[1].labels.shape == (48, 96)


@pytest.mark.skipif(not CUDA, reason='needs CUDA')
def test_cuda_pinned_buffers_are_reused_once_results_are_dropped():
    pipe = colour_pipeline(device='cuda')
    img, _ = block_image(128, 64, 16, seed=28)
    for _ in range(5):
        pipe([Frame(img, 'rgb8')])
    assert len(pipe._painter.pool._buffers) == 1
    assert pipe._painter.pool._buffers[0].is_pinned()
