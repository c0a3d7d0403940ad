"""
The segmentation pipeline, free of ROS: uint8 frames in; labels, colours, overlay out.

On CUDA every operation after the upload runs on the device (channel reordering, resize,
normalisation, ERFNet, logits upsampling and argmax, palette gather, alpha blend) and the outputs
come back in one copy. On the CPU the camera-size work is OpenCV/numpy in uint8 around the
network (seg_perception.postprocess).
"""

from dataclasses import dataclass
import json
import logging
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from seg_perception import color_convert
from seg_perception.engines import build_engine, PRECISIONS
from seg_perception.image_codec import channels, CONVERTED, ENCODINGS, overlay_encoding
from seg_perception.postprocess import (cpu_area_input, cpu_camera_labels, cpu_confidence,
                                        cpu_labels, CpuPainter, CudaPainter, CudaUploader,
                                        label_grid, resolve_label_upsampling, scaled_size)
from seg_perception.timing import NO_TIMER, NoTimer
from seg_training.base.classes import ClassTable
from seg_training.base.cli import resolve_device
from seg_training.nets import architectures
from seg_training.nets.checkpoint import load_model, ModelInfo
from seg_training.nets.tta import TTA, TTAModel

_logger = logging.getLogger(__name__)

# 'format' field of the class-table JSON that the node publishes and seg-bag records.
CLASS_TABLE_FORMAT = 'seg_perception.class_table'


def class_table_json(classes: ClassTable, model: str) -> str:
    """
    Serialise the class table for ``segmentation/class_table`` (std_msgs/String).

    The JSON object is ``ClassTable.to_dict()`` (``names``, ``colors`` as [r, g, b],
    ``void_index``, ``ignore_index``) plus ``ids`` (the label value of each class), ``format``
    and ``model`` (the model file that made the labels).
    """
    d = classes.to_dict()
    d.update({'format': CLASS_TABLE_FORMAT, 'ids': list(range(len(classes))), 'model': model})
    return json.dumps(d)


@dataclass(frozen=True)
class Outputs:
    """Which outputs to compute; the ones nobody wants cost nothing past the argmax."""

    labels: bool = True
    color: bool = True
    overlay: bool = True
    confidence: bool = False

    def any(self) -> bool:
        return self.labels or self.color or self.overlay or self.confidence


@dataclass
class Frame:
    """One camera image: (H, W, C) uint8 in ``encoding`` (see image_codec.ENCODINGS)."""

    image: np.ndarray
    encoding: str = 'rgb8'


@dataclass
class Result:
    """Per-frame outputs at the frame's own size (colour, overlay: at output_scale); or None."""

    labels: Optional[np.ndarray] = None      # (H, W) uint8 class index
    color: Optional[np.ndarray] = None       # (H', W', 3) uint8 rgb8
    overlay: Optional[np.ndarray] = None     # (H', W', C) uint8 in overlay_encoding
    overlay_encoding: str = 'rgb8'
    confidence: Optional[np.ndarray] = None  # (H, W) float32 max softmax probability


class SegmentationPipeline:
    """ERFNet inference on batches of frames of any size and supported encoding."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: str = 'auto',
                 precision: str = 'fp32', input_size: Optional[Tuple[int, int]] = None,
                 warmup: bool = True, accelerate: str = 'auto',
                 label_upsampling: str = 'auto', tta: Optional[TTA] = None,
                 source: str = 'MODEL') -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision {precision!r} not in {sorted(PRECISIONS)}')
        if info.encoder_only:
            raise ValueError('encoder-only models (1/8 resolution) are a training stage; '
                             'train the decoder before running the model')
        self.info = info
        self.device = resolve_device(device)
        if precision == 'fp16' and self.device.type == 'cpu':
            _logger.warning('precision fp16 on the CPU: no fast half-precision kernels there '
                            '(seconds per frame); fp32 is the CPU precision')
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        w, h = input_size if input_size else info.input_size
        info.check_input_size(int(w), int(h))
        self.input_size = (int(w), int(h))
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        # How the network runs (seg_perception/engines.py); it owns the model's device and dtype.
        # ``source`` (the model file) is named in the engines' errors.
        self.engine = build_engine(model, info, self.device, precision, accelerate,
                                   source=source, input_size=self.input_size)
        self.model = self.engine.model
        # Test-time augmentation (seg_training.nets.tta) reads as logits too; None: one plain run.
        self.tta = tta
        self._net = (self.engine if tta is None
                     else TTAModel(self.engine, tta, architectures.get(info.arch).stride))
        # The one network-input step (seg_training.nets.preprocess), as stored in the model file.
        self.preprocess = info.preprocessing(self.input_size)
        self._norm = self.preprocess.constants(self.device)
        self.label_upsampling = resolve_label_upsampling(label_upsampling, self.device)
        palette = info.classes.palette()  # (256, 3) uint8 RGB
        if self.device.type == 'cuda':
            self._painter = CudaPainter(palette, self.device)
            self._uploader = CudaUploader(self.device)
        else:
            self._painter = CpuPainter(palette)
        self._orders = {enc: torch.tensor(order, device=self.device)
                        for enc, (_, order, _) in ENCODINGS.items()}
        if warmup:
            self.warmup()

    @classmethod
    def from_file(cls, path: str, **kwargs) -> 'SegmentationPipeline':
        model, info = load_model(path)
        return cls(model, info, **dict(kwargs, source=kwargs.get('source', path)))

    def warmup(self, iterations: int = 2) -> float:
        """Run the network on zeros so cuDNN picks its kernels before the first frame."""
        w, h = self.input_size
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.zeros(1, 3, h, w, device=self.device)
            for _ in range(iterations):
                self.engine(x)  # the first call compiles / captures / exports for this size
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        _logger.info('warm-up on %s (%s, %dx%d): %.0f ms', self.device,
                     self.engine.describe(), w, h, dt * 1e3)
        return dt

    def _check(self, frame: Frame) -> np.ndarray:
        """Return the frame as (H, W, C) uint8; ValueError if it mismatches its encoding."""
        img = frame.image
        c = channels(frame.encoding)
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (
                img.ndim == 3 and img.shape[2] != c) or (img.ndim == 2 and c != 1):
            raise ValueError(f'frame of shape {img.shape} dtype {img.dtype} does not match '
                             f'encoding {frame.encoding}')
        return img if img.ndim == 3 else img[:, :, None]

    def _host_frame(self, frame: Frame) -> Tuple[np.ndarray, str]:
        """(H, W, C) uint8 image and its encoding; yuv422 and Bayer converted to rgb8 (OpenCV)."""
        img = self._check(frame)
        if frame.encoding in CONVERTED:
            return color_convert.to_rgb_numpy(img, frame.encoding), 'rgb8'  # (H, W, 3)
        return img, frame.encoding

    def _inputs(self, frames: Sequence[Frame], timer: NoTimer = NO_TIMER
                ) -> Tuple[List[torch.Tensor], List[Tuple[object, str]]]:
        """
        Return (RGB images for ``_network_input``, each frame's image and encoding as kept).

        CPU: frames stay numpy; where the model's resize is area averaging by whole factors the
        frame is shrunk in integers first (exactly ``preprocess``'s result), so no float image
        exists at camera size. CUDA: every frame of the batch goes up in one copy from pinned
        memory (yuv422 and Bayer are converted there) and stays on the device.
        """
        w, h = self.input_size
        with timer('upload'):
            if self.device.type != 'cuda':
                hosts = [self._host_frame(f) for f in frames]
                rgbs = []
                for img, enc in hosts:
                    small = cpu_area_input(img, enc, (h, w), self.preprocess.resize.method)
                    if small is not None:  # (h, w, 3) float32 RGB, already at the network size
                        rgbs.append(torch.from_numpy(small).permute(2, 0, 1)[None])
                    else:
                        src = np.ascontiguousarray(img)
                        if not src.flags.writeable:  # a view on a message's bytes
                            src = src.copy()
                        t = torch.from_numpy(src)  # (H, W, C) uint8
                        t = t.index_select(2, self._orders[enc])  # (H, W, 3) RGB
                        rgbs.append(t.permute(2, 0, 1)[None].float())  # (1, 3, H, W)
                return rgbs, hosts
            raw = [(i, self._check(f)) for i, f in enumerate(frames)
                   if f.encoding not in CONVERTED]
            uploaded = dict(zip([i for i, _ in raw], self._uploader.upload([a for _, a in raw])))
            rgbs, hosts = [], []
            for i, frame in enumerate(frames):
                if i in uploaded:  # (H, W, C) uint8 on the device
                    t = uploaded[i]
                    rgbs.append(t.index_select(2, self._orders[frame.encoding])
                                .permute(2, 0, 1)[None].float())  # (1, 3, H, W)
                    hosts.append((t, frame.encoding))
                else:  # yuv422 / Bayer: the raw bytes go up, converted on the device
                    rgb = color_convert.to_rgb_tensor(self._check(frame), frame.encoding,
                                                      self.device)  # (1, 3, H, W)
                    rgbs.append(rgb)
                    hosts.append((rgb[0].permute(1, 2, 0).to(torch.uint8), 'rgb8'))
            return rgbs, hosts

    def _to_rgb(self, frame: Frame) -> torch.Tensor:
        """(1, 3, H', W') float32 RGB in 0..255 for ``_network_input`` (H', W': see _inputs)."""
        return self._inputs([frame])[0][0]

    def _network_input(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.preprocess(rgb, self._norm)  # (1, 3, h, w)

    @torch.inference_mode()
    def logits(self, frames: Sequence[Frame]) -> torch.Tensor:
        """(B, num_classes, h, w) float32 network output for a batch of frames."""
        return self._forward(self._inputs(frames)[0])

    def _forward(self, rgbs: Sequence[torch.Tensor], timer: NoTimer = NO_TIMER) -> torch.Tensor:
        with timer('resize'):
            x = torch.cat([self._network_input(r) for r in rgbs])  # (B, 3, h, w)
        with timer('forward'):
            return self._net(x)  # (B, K, h, w) float32

    @torch.inference_mode()
    def __call__(self, frames: Sequence[Frame], outputs: Outputs = Outputs(),
                 alpha: float = 0.5, output_scale: float = 1.0,
                 timer: NoTimer = NO_TIMER) -> List[Result]:
        """
        Segment ``frames`` in one forward pass; results are at each frame's own size.

        ``output_scale`` (0 < s <= 1) makes colour and overlay smaller than the frame (labels and
        confidence stay at its size); ``timer`` (a StageTimer) records the time of each stage.
        """
        if not frames:
            return []
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'overlay alpha {alpha} outside [0, 1]')
        if not 0.0 < output_scale <= 1.0:
            raise ValueError(f'output scale {output_scale} outside (0, 1]')
        rgbs, hosts = self._inputs(frames, timer)
        logits = self._forward(rgbs, timer)  # (B, K, h, w)
        if self.device.type == 'cuda':
            return self._finish_cuda(frames, hosts, logits, outputs, alpha, output_scale,
                                     timer)
        with timer('labels'):
            hwc = logits.permute(0, 2, 3, 1).contiguous().numpy()  # (B, h, w, K)
        return [self._finish_cpu(f, hosts[i], hwc[i], outputs, alpha, output_scale, timer)
                for i, f in enumerate(frames)]

    def _finish_cpu(self, frame: Frame, host: Tuple[np.ndarray, str], logits: np.ndarray,
                    outputs: Outputs, alpha: float, scale: float, timer: NoTimer) -> Result:
        """(h, w, K) logits of one frame -> its Result, with OpenCV/numpy in uint8."""
        cam = frame.image.shape[:2]
        res = Result(overlay_encoding=overlay_encoding(frame.encoding))
        with timer('labels'):
            grid = label_grid(self.label_upsampling, logits.shape[:2], cam)
            grid_labels = cpu_labels(logits, grid)  # (gh, gw) uint8
            if outputs.labels:
                res.labels = cpu_camera_labels(grid_labels, cam)  # (H, W) uint8
        if outputs.confidence:
            with timer('confidence'):
                res.confidence = cpu_confidence(logits, cam)  # (H, W) float32
        out_hw = scaled_size(cam, scale)
        if outputs.color:
            with timer('color'):
                res.color = self._painter.color(grid_labels, out_hw)  # (h', w', 3) rgb8
        if outputs.overlay:
            with timer('overlay'):
                res.overlay = self._painter.overlay(host[0], host[1], grid_labels, out_hw,
                                                    alpha, res.color)
        return res

    def _finish_cuda(self, frames: Sequence[Frame], hosts: Sequence[Tuple[torch.Tensor, str]],
                     logits: torch.Tensor, outputs: Outputs, alpha: float, scale: float,
                     timer: NoTimer) -> List[Result]:
        """Labels, colours and overlay on the device; one download for the whole batch."""
        painter = self._painter
        tensors: List[Optional[torch.Tensor]] = []
        for i, (frame, (image, encoding)) in enumerate(zip(frames, hosts)):
            cam = tuple(frame.image.shape[:2])
            out_hw = scaled_size(cam, scale)
            with timer('labels'):
                grid = label_grid(self.label_upsampling, tuple(logits.shape[-2:]), cam)
                labels = painter.labels(logits[i], grid, cam)  # (H, W) uint8
            conf = color = overlay = None
            if outputs.confidence:
                with timer('confidence'):
                    conf = painter.confidence(logits[i], cam)  # (H, W) float32
            if outputs.color:
                with timer('color'):
                    color = painter.color(labels, out_hw)  # (h', w', 3) uint8 RGB
            if outputs.overlay:
                with timer('overlay'):
                    overlay = painter.overlay(image, encoding, labels, out_hw, alpha)
            tensors += [labels if outputs.labels else None, conf, color, overlay]
        with timer('download'):
            arrays = painter.download(tensors)  # one copy, one synchronisation
        results = []
        for i, frame in enumerate(frames):
            labels, conf, color, overlay = arrays[4 * i:4 * i + 4]
            results.append(Result(labels=labels, color=color, overlay=overlay,
                                  overlay_encoding=overlay_encoding(frame.encoding),
                                  confidence=conf))
        return results
