"""Engines: every CPU engine gives eager's logits; settings that cannot run fail loudly; CUDA."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from seg_perception import engines
from seg_perception.engines import build_engine, EngineError, resolve
from seg_perception.pipeline import Frame, SegmentationPipeline
from seg_perception.resources import default_model_path
from seg_training.base.classes import ClassTable
from seg_training.nets import architectures
from seg_training.nets.checkpoint import load_model, ModelInfo
from seg_training.nets.model import ERFNet, ERFNetConfig
from seg_training.synth import render_frame

CPU = torch.device('cpu')
CUDA = torch.cuda.is_available()
TABLE = ClassTable(names=('a', 'b', 'c', 'd', 'e'),
                   colors=((200, 0, 0), (0, 200, 0), (0, 0, 200), (250, 250, 250), (40, 40, 40)))
INFO = ModelInfo(classes=TABLE, input_size=(64, 32))


def random_net(arch: str = 'erfnet', seed: int = 0) -> nn.Module:
    """
    Build ``arch`` (ERFNet, or ESPNetv2 of width 0.5) with seeded random weights.

    Its BN statistics are non-trivial, and it is in eval mode.
    """
    torch.manual_seed(seed)
    if arch == 'erfnet':
        model = ERFNet(ERFNetConfig(num_classes=len(TABLE)))
    else:
        model = architectures.build(arch, {'num_classes': len(TABLE), 'scale': 0.5})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def random_erfnet(seed: int = 0) -> ERFNet:
    """Build an ERFNet with seeded random weights and non-trivial BN statistics, in eval mode."""
    return random_net('erfnet', seed)


def normalised_batch(batch: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g)  # (B, 3, h, w)


def eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize('accelerate', ['none', 'channels_last', 'onnxruntime'])
@pytest.mark.parametrize('arch', ['erfnet', 'espnetv2'])
def test_cpu_engines_give_eagers_logits(accelerate, arch):
    model = random_net(arch)
    x = normalised_batch(2, 32, 64)
    expected = eager(copy.deepcopy(model), x)  # (2, K, 32, 64)
    engine = build_engine(model, INFO, CPU, 'fp32', accelerate)
    assert engine.name == accelerate
    y = engine(x)
    assert y.shape == (2, len(TABLE), 32, 64) and y.dtype == torch.float32
    assert y.device == CPU
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    # A second size runs too (onnxruntime: a second session; the batch is dynamic).
    x2 = normalised_batch(3, 32, 96, seed=2)
    torch.testing.assert_close(engine(x2), eager(copy.deepcopy(model), x2), atol=1e-4,
                               rtol=1e-4)


def test_onnxruntime_exports_once_per_size_with_a_thread_per_core():
    engine = build_engine(random_erfnet(), INFO, CPU, 'fp32', 'onnxruntime')
    assert engine.threads == engines.cpu_cores() >= 1
    for batch in (1, 3, 1):
        engine(normalised_batch(batch, 32, 64))
    assert sorted(engine._sessions) == [(32, 64)]
    engine(normalised_batch(1, 16, 64))
    assert sorted(engine._sessions) == [(16, 64), (32, 64)]
    assert 'onnxruntime' in engine.describe() and f'{engine.threads} threads' in engine.describe()


@pytest.mark.timeout(600)
def test_compile_engine_on_cpu_matches_eager():
    # torch.compile needs a C++ compiler on the CPU; a small network keeps the compile short.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, len(TABLE), 1)).eval()
    x = normalised_batch(2, 16, 32)
    expected = eager(copy.deepcopy(model), x)
    engine = build_engine(model, INFO, CPU, 'fp32', 'compile')
    assert engine.name == 'compile'
    torch.testing.assert_close(engine(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(engine(x[:1]), expected[:1], atol=1e-5, rtol=1e-5)


def test_settings_that_cannot_run_fail_with_a_clear_message():
    with pytest.raises(EngineError, match='cuda_graphs needs a CUDA device'):
        build_engine(random_erfnet(), INFO, CPU, 'fp32', 'cuda_graphs')
    with pytest.raises(EngineError, match='cuda_graphs needs a CUDA device'):
        engines.CudaGraphEngine(random_erfnet(), CPU, 'fp32')
    with pytest.raises(EngineError, match='onnxruntime runs fp32 only, not fp16'):
        build_engine(random_erfnet(), INFO, CPU, 'fp16', 'onnxruntime')
    # Refused before anything touches the GPU, so this runs without one too.
    with pytest.raises(EngineError, match='onnxruntime runs on the CPU only'):
        build_engine(random_erfnet(), INFO, torch.device('cuda'), 'fp32', 'onnxruntime')
    with pytest.raises(ValueError, match="accelerate 'tensorrt' is not one of"):
        build_engine(random_erfnet(), INFO, CPU, 'fp32', 'tensorrt')
    with pytest.raises(ValueError, match='accelerate'):
        SegmentationPipeline(random_erfnet(), INFO, device='cpu', accelerate='fast')


def test_auto_is_the_fastest_measured_engine_for_device_and_precision():
    assert resolve('auto', CPU, 'fp32') == 'onnxruntime'
    assert resolve('auto', CPU, 'fp16') == 'none'
    assert resolve('auto', CPU, 'bf16') == 'none'
    assert resolve('auto', torch.device('cuda', 0), 'fp16') == 'channels_last'
    assert resolve('compile', CPU, 'fp32') == 'compile'
    pipe = SegmentationPipeline(random_erfnet(), INFO, device='cpu', warmup=False)
    assert pipe.engine.name == 'onnxruntime'
    assert next(pipe.model.parameters()).dtype == torch.float32
    pipe = SegmentationPipeline(random_erfnet(), INFO, device='cpu', precision='bf16',
                                warmup=False)
    assert pipe.engine.name == 'none'
    assert next(pipe.model.parameters()).dtype == torch.bfloat16


def test_bundled_model_auto_labels_agree_with_eager_on_a_synthetic_frame():
    rgb, _ = render_frame(7, (512, 256))  # (256, 512, 3) uint8, a seg-synth street scene
    frame = Frame(rgb, 'rgb8')
    path = str(default_model_path())
    pipes = {a: SegmentationPipeline(*load_model(path), device='cpu', accelerate=a,
                                     warmup=False) for a in ('none', 'auto')}
    assert pipes['auto'].engine.name == 'onnxruntime'
    logits = {a: p.logits([frame]) for a, p in pipes.items()}  # (1, K, h, w)
    torch.testing.assert_close(logits['auto'], logits['none'], atol=1e-3, rtol=1e-3)
    labels = {a: p([frame])[0].labels for a, p in pipes.items()}  # (256, 512) at frame size
    agreement = float(np.mean(labels['auto'] == labels['none']))
    assert agreement >= 0.999, agreement
    assert len(np.unique(labels['none'])) >= 3  # a real scene, not one class everywhere


# --- CUDA (skipped without a GPU; bench/gpu_check.sh runs them) --------------------------------

needs_cuda = pytest.mark.skipif(not CUDA, reason='needs CUDA')


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize('arch', ['erfnet', 'espnetv2'])
def test_cuda_graphs_capture_once_per_shape_and_match_eager(arch):
    dev = torch.device('cuda')
    model = random_net(arch)
    reference = copy.deepcopy(model).to(dev)
    engine = build_engine(model, INFO, dev, 'fp32', 'cuda_graphs')
    x1, x2 = normalised_batch(1, 32, 64).to(dev), normalised_batch(1, 32, 64, seed=5).to(dev)
    y1 = engine(x1)
    y2 = engine(x2)  # replays the same graph: y1 must not change
    assert engine.captured_shapes == ((1, 3, 32, 64),)
    torch.testing.assert_close(y1, eager(reference, x1), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(y2, eager(reference, x2), atol=1e-3, rtol=1e-3)
    x3 = normalised_batch(3, 32, 64, seed=6).to(dev)
    torch.testing.assert_close(engine(x3), eager(reference, x3), atol=1e-3, rtol=1e-3)
    assert len(engine.captured_shapes) == 2
    assert y1.dtype == torch.float32 and y1.is_cuda


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize('accelerate, precision', [
    ('cuda_graphs', 'fp16'), ('cuda_graphs', 'bf16'), ('channels_last', 'fp16'),
    ('channels_last', 'bf16'), ('compile', 'fp16')])  # one compile: it takes a minute
@pytest.mark.parametrize('arch', ['erfnet', 'espnetv2'])
def test_cuda_engines_in_half_precision_agree_with_fp32(accelerate, precision, arch):
    dev = torch.device('cuda')
    model = random_net(arch)
    reference = copy.deepcopy(model).to(dev)
    engine = build_engine(model, INFO, dev, precision, accelerate)
    assert next(engine.model.parameters()).dtype == engines.PRECISIONS[precision]
    x = normalised_batch(2, 32, 64).to(dev)
    y = engine(x)
    expected = eager(reference, x)
    assert y.dtype == torch.float32
    agreement = (y.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= 0.98, agreement


@pytest.mark.cuda
@needs_cuda
def test_cuda_pipeline_with_cuda_graphs_matches_eager_on_batches():
    rgb, _ = render_frame(7, (512, 256))
    frames = [Frame(rgb, 'rgb8'), Frame(np.ascontiguousarray(rgb[:, ::-1]), 'rgb8')]
    path = str(default_model_path())
    graphs = SegmentationPipeline(*load_model(path), device='cuda', accelerate='cuda_graphs')
    plain = SegmentationPipeline(*load_model(path), device='cuda', accelerate='none')
    assert graphs.engine.captured_shapes == ((1, 3) + graphs.input_size[::-1],)  # warm-up
    for batch in (frames[:1], frames, frames[1:]):
        got, want = graphs(batch), plain(batch)
        for g, w in zip(got, want):
            assert np.mean(g.labels == w.labels) >= 0.999
    assert len(graphs.engine.captured_shapes) == 2
