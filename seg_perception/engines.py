"""
How the network runs: one callable from a normalised input batch to float32 logits.

:func:`build_engine` turns a loaded model into an :class:`Engine`, called as
``engine(x)`` with ``x`` a (B, 3, h, w) float32 tensor on the device (pixels normalised as
the model expects) and returning (B, K, h, w) float32 logits on the device. The model file stays
the one source of truth: every engine is made from the loaded PyTorch model at start-up, no
extra files are written or read.

``accelerate`` settings (node parameter ``accelerate``, ``--accelerate`` of seg-predict and
seg-bag):

* ``auto``: the fastest engine measured for the device and precision (see :func:`resolve`):
  on the CPU in fp32 ``onnxruntime_int8`` where the model file carries an int8 calibration whose
  measured label agreement with fp32 is at least 98 % and whose measured speed-up is at least
  1.2x, ``onnxruntime`` otherwise (and where the calibration no longer fits the model, with a
  warning); ``none`` on the CPU in fp16/bf16,
  ``channels_last`` on CUDA;
* ``none``: the PyTorch model as it is (eager);
* ``channels_last``: eager with the NHWC memory layout (``compile`` and ``cuda_graphs`` use it on
  CUDA too);
* ``compile``: ``torch.compile`` (Inductor), specialised to each input shape; the first call of a
  shape compiles it (about a minute for ERFNet on a 2-core CPU), so the warm-up pays for it;
* ``cuda_graphs``: CUDA only; eager channels_last captured as one CUDA graph per input shape
  (batch size and network size) with static input and output buffers; the first call of a shape
  (the warm-up for batch 1) warms cuDNN up and captures;
* ``onnxruntime``: CPU and fp32 only; the model is exported to ONNX in memory and run by
  onnxruntime's CPU provider with one thread per core (spinning threads off: the CPU is shared
  with DDS and the rest of the pipeline).
* ``onnxruntime_int8``: CPU and fp32 input only; the same export quantized at start-up (a few
  seconds) by onnxruntime's static QDQ quantizer: the convolutions' weights int8 per output
  channel and their inputs and outputs uint8 per tensor, with the activation ranges stored in
  the model file's ``calibration`` entry (seg_training.nets.calibration), so no extra file is read;
  grouped (depthwise) convolutions, the other ops and the layer that makes the logits stay fp32.
  ``seg-export --model M --calibrate FRAMES_DIR --output M`` adds that entry: it runs the model
  on 64 frames of the folder (images, or a Cityscapes or folder-layout dataset root) at its
  network size (``--size``), takes the ranges from three quarters of them (min/max, or
  ``--calibration-method percentile``) and records the label agreement int8 vs fp32 on the other
  quarter and how much faster int8 ran on them. A model file without a calibration, or one
  whose calibration belongs to other weights or another ONNX graph (another torch exporter or
  opset; for ESPNetv2, whose adaptive pooling changes the graph with the size, another network
  size), is refused naming the command. ERFNet's graph is the same at every size: its ranges
  serve all sizes.
  Measured (bench/bench_int8.py, 2-core AMD EPYC with avx512_vnni, shared, load 6-11;
  bench/results/int8-*.json): ERFNet (erfnet_synth.pt, calibrated on 24 seg-synth frames,
  timed on CamVid test frames) 2.7x faster than ``onnxruntime`` at 512x256 (98.3 % of the
  labels equal) and 2.0x at 1024x512 (97.8 %); ESPNetv2 (mostly depthwise convolutions, which
  stay fp32) 0.94-1.07x, so not worth it (its all-convolutions int8 was slower still), losing
  0.5-1.2 mIoU points on real frames. No bundled model carries a calibration: ERFNet's
  synthetic model agrees only 96 % with its fp32 labels on the real CamVid samples at 256x128,
  and ESPNetv2 is not faster.

An engine that cannot run on the device or in the precision raises :class:`EngineError` naming
the setting and why.
"""

import io
import logging
import os
import threading
import time
from typing import Any, Dict, Mapping, Optional, Tuple
import warnings

import torch

from seg_training.nets import calibration
from seg_training.nets.checkpoint import ModelInfo, state_hash

_logger = logging.getLogger(__name__)

ACCELERATIONS = ('auto', 'none', 'channels_last', 'compile', 'cuda_graphs', 'onnxruntime',
                 'onnxruntime_int8')
PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = 'image', 'logits'
# How export_onnx exports (recorded with an int8 calibration, whose ranges belong to its graph).
ONNX_EXPORTER = 'torch.onnx.export (TorchScript, dynamo=False, constant folding, dynamic batch)'
CUDA_GRAPH_WARMUP = 3  # eager runs on a side stream before a capture (cuDNN picks algorithms)


class EngineError(RuntimeError):
    """An acceleration setting that cannot run here; the message says which and why."""


def resolve(accelerate: str, device: torch.device, precision: str,
            calibration_record: Optional[Mapping] = None) -> str:
    """
    Return the engine ``accelerate`` stands for on ``device`` in ``precision``.

    ``auto`` picks the fastest engine measured (bench/bench_engines.py, bench/bench_int8.py): on
    the CPU in fp32, onnxruntime_int8 where ``calibration_record`` (the model file's) measured
    int8 labels agreeing with fp32 on at least calibration.MIN_AGREEMENT of the pixels and a
    speed-up of at least calibration.MIN_SPEEDUP (calibration.within_bound), else
    onnxruntime (ERFNet forward 1.8-3x faster than eager, same labels); on the CPU in fp16/bf16,
    eager (onnxruntime runs fp32 only); on CUDA, eager channels_last. Other settings are returned
    as they are once checked against the device and precision.
    """
    if accelerate not in ACCELERATIONS:
        raise ValueError(f'accelerate {accelerate!r} is not one of {list(ACCELERATIONS)}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision {precision!r} is not one of {sorted(PRECISIONS)}')
    if accelerate == 'auto':
        if device.type == 'cuda':
            return 'channels_last'
        if precision != 'fp32':
            return 'none'
        return ('onnxruntime_int8' if calibration.within_bound(calibration_record)
                else 'onnxruntime')
    if accelerate == 'cuda_graphs' and device.type != 'cuda':
        raise EngineError(f'accelerate cuda_graphs needs a CUDA device, not {device}; '
                          'use auto, none, channels_last, compile or onnxruntime')
    if accelerate in ('onnxruntime', 'onnxruntime_int8'):
        if device.type != 'cpu':
            raise EngineError(f'accelerate {accelerate} runs on the CPU only, not on {device}; '
                              'use auto, cuda_graphs, compile or channels_last there')
        if precision != 'fp32':
            what = 'fp32' if accelerate == 'onnxruntime' else 'with fp32 input'
            raise EngineError(f'accelerate {accelerate} runs {what} only, not {precision}')
    return accelerate


class Engine:
    """The PyTorch model run eagerly; subclasses change how the same model is run."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str,
                 channels_last: bool, name: str) -> None:
        self.name = name
        self.device = device
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.channels_last = channels_last
        self.model = model.to(device, dtype=self.dtype).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def describe(self) -> str:
        """Name the engine for logs and diagnostics, e.g. 'channels_last (fp16)'."""
        layout = ', channels_last' if self.channels_last and self.name != 'channels_last' else ''
        return f'{self.name} ({self.precision}{layout})'

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)  # (B, 3, h, w)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float32 normalised input -> (B, K, h, w) float32 logits."""
        with torch.inference_mode():
            return self.model(self._prepare(x)).float()


class CompiledEngine(Engine):
    """``torch.compile`` of the model (Inductor); a new input shape compiles once more."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str) -> None:
        super().__init__(model, device, precision, channels_last=device.type == 'cuda',
                         name='compile')
        # One graph for the whole network; a graph break would be a silent slowdown.
        self._compiled = torch.compile(self.model, fullgraph=True, dynamic=False)
        self._shapes: set = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = self._compiled(self._prepare(x)).float()  # (B, K, h, w)
        if shape not in self._shapes:
            self._shapes.add(shape)
            _logger.info('compiled the network for input %s in %.1f s', shape,
                         time.perf_counter() - t0)
        return y


class CudaGraphEngine(Engine):
    """
    The model captured as CUDA graphs: one per input shape, replayed on static buffers.

    A new shape is warmed up eagerly on a side stream and captured on its first call; later calls
    copy the input into the shape's static input, replay the graph and copy the static output out
    (so the caller's tensor outlives the next replay).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str) -> None:
        if device.type != 'cuda':
            raise EngineError(f'accelerate cuda_graphs needs a CUDA device, not {device}')
        super().__init__(model, device, precision, channels_last=True, name='cuda_graphs')
        # shape -> (graph, static input (B, 3, h, w), static output (B, K, h, w))
        self._graphs: Dict[Tuple[int, ...], Tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    @property
    def captured_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """Input shapes captured so far."""
        return tuple(self._graphs)

    def _capture(self, shape: Tuple[int, ...]) -> Tuple[Any, torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        with torch.cuda.device(self.device), torch.inference_mode():
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last)  # (B, 3, h, w)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(CUDA_GRAPH_WARMUP):
                    self.model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)  # (B, K, h, w)
            torch.cuda.synchronize(self.device)
        _logger.info('captured a CUDA graph for input %s in %.0f ms', shape,
                     (time.perf_counter() - t0) * 1e3)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        with self._lock, torch.inference_mode():
            entry = self._graphs.get(shape)
            if entry is None:
                entry = self._graphs[shape] = self._capture(shape)
            graph, static_in, static_out = entry
            static_in.copy_(x)  # casts to the precision and to channels_last
            graph.replay()
            # A new tensor, made on the stream before any later replay can overwrite the buffer.
            return static_out.float() if static_out.dtype != torch.float32 else static_out.clone()


class OnnxRuntimeEngine(Engine):
    """
    The model exported to ONNX in memory and run by onnxruntime's CPU provider.

    One session per network input size (h, w), made on its first call, batch size dynamic.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str,
                 threads: int = 0) -> None:
        if device.type != 'cpu' or precision != 'fp32':
            raise EngineError(f'accelerate onnxruntime runs on the CPU in fp32 only, not on '
                              f'{device} in {precision}')
        super().__init__(model, device, precision, channels_last=False, name='onnxruntime')
        import onnxruntime  # noqa: F401  (fails here, at start-up, when it is missing)

        self.threads = threads or cpu_cores()
        self._sessions: Dict[Tuple[int, int], object] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f'onnxruntime (CPU provider, {self.threads} threads, fp32)'

    def _onnx(self, h: int, w: int) -> bytes:
        """Return the ONNX model the session for input size (h, w) runs."""
        return export_onnx(self.model, h, w)

    def _session(self, h: int, w: int) -> object:
        import onnxruntime as ort

        t0 = time.perf_counter()
        session = calibration.session(self._onnx(h, w), self.threads)
        _logger.info('exported the network to ONNX for %dx%d and loaded it into onnxruntime '
                     '%s in %.1f s (%s)', w, h, ort.__version__, time.perf_counter() - t0,
                     self.describe())
        return session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        with self._lock:
            session = self._sessions.get((h, w))
            if session is None:
                session = self._sessions[(h, w)] = self._session(h, w)
        inp = x.detach().to('cpu', torch.float32).contiguous().numpy()  # (B, 3, h, w)
        (out,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: inp})  # (B, K, h, w) float32
        return torch.from_numpy(out)


class OnnxRuntimeInt8Engine(OnnxRuntimeEngine):
    """
    The ONNX export quantized to int8 (QDQ) with the model file's calibration, on the CPU.

    The session for ``input_size`` (W, H; default the calibrated size) is made here, at
    start-up, so a calibration that does not fit the model fails before the first frame; other
    sizes get theirs on their first call.
    """

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: torch.device,
                 precision: str, threads: int = 0, source: str = 'MODEL',
                 input_size: Optional[Tuple[int, int]] = None) -> None:
        record = info.calibration
        if record is None:
            raise EngineError(f'accelerate onnxruntime_int8 needs a model file with an int8 '
                              f'calibration; {source} has none: add it with '
                              f'{calibration.recalibrate_hint(source)}')
        super().__init__(model, device, precision, threads)
        self.name = 'onnxruntime_int8'
        self.record = record
        self.source = source
        if record['opset'] != ONNX_OPSET or state_hash(self.model) != record['state_sha256']:
            what = (f'ONNX opset {record["opset"]}' if record['opset'] != ONNX_OPSET
                    else 'other weights')
            raise EngineError(f'{source}: its int8 calibration was made for {what}; '
                              f'recalibrate with: {calibration.recalibrate_hint(source)}')
        w, h = input_size or record['input_size']
        self._sessions[(int(h), int(w))] = self._session(int(h), int(w))

    def describe(self) -> str:
        return (f'onnxruntime_int8 (CPU provider, {self.threads} threads, int8 QDQ, '
                f'{self.record["method"]} calibration, label agreement '
                f'{100 * self.record["agreement"]:.1f} %)')

    def _onnx(self, h: int, w: int) -> bytes:
        try:
            return calibration.quantize(export_onnx(self.model, h, w), self.record, self.source,
                                        (w, h))
        except calibration.CalibrationError as e:
            raise EngineError(str(e)) from None


def cpu_cores() -> int:
    """Return the number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def export_onnx(model: torch.nn.Module, height: int, width: int) -> bytes:
    """Export ``model`` (fp32, CPU) to ONNX bytes: input 'image' (B, 3, h, w), batch dynamic."""
    axes = {ONNX_INPUT: {0: 'batch'}, ONNX_OUTPUT: {0: 'batch'}}
    buf = io.BytesIO()
    # Tracing needs ordinary tensors, also when called from inference-mode code.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The input-size check becomes a constant in the graph; the size is fixed per session.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        # A strided slice (ESPNetv2's channel shuffle) is left unfolded: a notice, not a fault.
        warnings.filterwarnings('ignore', message='Constant folding - Only steps=1')
        example = torch.zeros(1, 3, height, width)
        torch.onnx.export(model, (example,), buf, input_names=[ONNX_INPUT],
                          output_names=[ONNX_OUTPUT], opset_version=ONNX_OPSET,
                          dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def build_engine(model: torch.nn.Module, info: ModelInfo, device: torch.device,
                 precision: str = 'fp32', accelerate: str = 'auto', source: str = 'MODEL',
                 input_size: Optional[Tuple[int, int]] = None) -> Engine:
    """
    Make the engine ``accelerate`` names for ``model`` on ``device`` in ``precision``.

    The model is moved to the device and precision (in place). Raises ValueError for an unknown
    setting and EngineError for one that cannot run on the device or in the precision.
    ``source`` names the model file in errors (the int8 engine's command to calibrate it);
    ``input_size`` (W, H), the network size it will run at, is prepared at once by the int8
    engine (so ``auto`` falls back to fp32 at start-up where its calibration does not fit).
    """
    name = resolve(accelerate, device, precision, info.calibration)
    assert info.num_classes >= 1, 'a model predicts at least one class'
    engine: Engine
    if name == 'onnxruntime_int8':
        try:
            engine = OnnxRuntimeInt8Engine(model, info, device, precision, source=source,
                                           input_size=input_size)
        except EngineError as e:
            if accelerate != 'auto':
                raise
            _logger.warning('accelerate auto: %s; running onnxruntime (fp32) instead', e)
            engine = OnnxRuntimeEngine(model, device, precision)
    elif name == 'onnxruntime':
        engine = OnnxRuntimeEngine(model, device, precision)
    elif name == 'cuda_graphs':
        engine = CudaGraphEngine(model, device, precision)
    elif name == 'compile':
        engine = CompiledEngine(model, device, precision)
    else:
        engine = Engine(model, device, precision, channels_last=name == 'channels_last',
                        name=name)
    if accelerate == 'auto':
        _logger.info('accelerate auto on %s in %s: %s', device, precision, engine.describe())
    return engine
