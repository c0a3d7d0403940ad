"""
The segmentation pipeline, free of ROS: uint8 frames in; labels, colours, overlay out.

Every tensor operation after the upload runs on the model's device: channel reordering,
resize, normalisation, ERFNet, softmax/argmax, label resize, palette lookup and alpha blend.
"""

from dataclasses import dataclass
import json
import logging
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from seg_perception import color_convert
from seg_perception.engines import build_engine, PRECISIONS
from seg_perception.image_codec import channels, CONVERTED, ENCODINGS, overlay_encoding
from seg_training.checkpoint import load_model, ModelInfo
from seg_training.classes import ClassTable
from seg_training.cli import resolve_device
from seg_training.model import check_input_size

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
    """Per-frame outputs at the frame's own size; None where not asked for."""

    labels: Optional[np.ndarray] = None      # (H, W) uint8 class index
    color: Optional[np.ndarray] = None       # (H, W, 3) uint8 rgb8
    overlay: Optional[np.ndarray] = None     # (H, W, C) uint8 in overlay_encoding
    overlay_encoding: str = 'rgb8'
    confidence: Optional[np.ndarray] = None  # (H, W) float32 max softmax probability


class SegmentationPipeline:
    """ERFNet inference on batches of frames of any size and supported encoding."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: str = 'auto',
                 precision: str = 'fp32', input_size: Optional[Tuple[int, int]] = None,
                 warmup: bool = True, accelerate: str = 'auto') -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision {precision!r} not in {sorted(PRECISIONS)}')
        if info.encoder_only:
            raise ValueError('encoder-only models (1/8 resolution) are a training stage; '
                             'train the decoder before running the model')
        self.info = info
        self.device = resolve_device(device)
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        w, h = input_size if input_size else info.input_size
        check_input_size(int(h), int(w))
        self.input_size = (int(w), int(h))
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        # How the network runs (seg_perception/engines.py); it owns the model's device and dtype.
        self.engine = build_engine(model, info, self.device, precision, accelerate)
        self.model = self.engine.model
        # The one network-input step (seg_training.preprocess), as stored in the model file.
        self.preprocess = info.preprocessing(self.input_size)
        self._norm = self.preprocess.constants(self.device)
        self._palette = torch.from_numpy(info.classes.palette()).to(self.device)  # (256, 3)
        self._orders = {enc: torch.tensor(order, device=self.device)
                        for enc, (_, order, _) in ENCODINGS.items()}
        if warmup:
            self.warmup()

    @classmethod
    def from_file(cls, path: str, **kwargs) -> 'SegmentationPipeline':
        model, info = load_model(path)
        return cls(model, info, **kwargs)

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

    def _to_rgb(self, frame: Frame) -> torch.Tensor:
        """(1, 3, H, W) float32 RGB in 0..255 on the device."""
        img = frame.image
        c = channels(frame.encoding)
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (
                img.ndim == 3 and img.shape[2] != c) or (img.ndim == 2 and c != 1):
            raise ValueError(f'frame of shape {img.shape} dtype {img.dtype} does not match '
                             f'encoding {frame.encoding}')
        if frame.encoding in CONVERTED:  # yuv422 / Bayer: converted on the device
            return color_convert.to_rgb_tensor(img, frame.encoding, self.device)
        src = np.ascontiguousarray(img)
        if not src.flags.writeable:  # e.g. a view on a bag's bytes; torch wants writable memory
            src = src.copy()
        t = torch.from_numpy(src).to(self.device, non_blocking=True)
        t = t.view(img.shape[0], img.shape[1], c)  # (H, W, C) uint8
        t = t.index_select(2, self._orders[frame.encoding])  # (H, W, 3) RGB
        return t.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)

    def _network_input(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.preprocess(rgb, self._norm)  # (1, 3, h, w)

    @torch.inference_mode()
    def logits(self, frames: Sequence[Frame]) -> torch.Tensor:
        """(B, num_classes, h, w) float32 network output for a batch of frames."""
        return self._forward([self._to_rgb(f) for f in frames])

    def _forward(self, rgbs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self._network_input(r) for r in rgbs])  # (B, 3, h, w)
        return self.engine(x)  # (B, K, h, w) float32

    @torch.inference_mode()
    def __call__(self, frames: Sequence[Frame], outputs: Outputs = Outputs(),
                 alpha: float = 0.5) -> List[Result]:
        """Segment ``frames`` in one forward pass; results are at each frame's own size."""
        if not frames:
            return []
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'overlay alpha {alpha} outside [0, 1]')
        rgbs = [self._to_rgb(f) for f in frames]
        logits = self._forward(rgbs)  # (B, K, h, w)
        if outputs.confidence:
            conf, labels = torch.softmax(logits, dim=1).max(dim=1)  # (B, h, w) each
        else:
            labels, conf = logits.argmax(dim=1), None  # (B, h, w)
        labels = labels.to(torch.uint8)
        results = []
        for i, (frame, rgb) in enumerate(zip(frames, rgbs)):
            results.append(self._finish(frame, rgb, labels[i], None if conf is None else conf[i],
                                        outputs, alpha))
        return results

    def _finish(self, frame: Frame, rgb: torch.Tensor, labels: torch.Tensor,
                conf: Optional[torch.Tensor], outputs: Outputs, alpha: float) -> Result:
        h, w = frame.image.shape[:2]
        if labels.shape != (h, w):
            labels = F.interpolate(labels[None, None].float(), size=(h, w),
                                   mode='nearest')[0, 0].to(torch.uint8)  # (H, W)
            if conf is not None:
                conf = F.interpolate(conf[None, None], size=(h, w), mode='bilinear',
                                     align_corners=False)[0, 0]
        res = Result(overlay_encoding=overlay_encoding(frame.encoding))
        if outputs.labels:
            res.labels = labels.cpu().numpy()
        if outputs.confidence and conf is not None:
            res.confidence = conf.clamp(0, 1).cpu().numpy()
        if outputs.color or outputs.overlay:
            color = self._palette[labels.long()]  # (H, W, 3) uint8 RGB
            if outputs.color:
                res.color = color.cpu().numpy()
            if outputs.overlay:
                res.overlay = self._blend(frame, rgb, color, alpha).cpu().numpy()
        return res

    def _blend(self, frame: Frame, rgb: torch.Tensor, color: torch.Tensor,
               alpha: float) -> torch.Tensor:
        """Alpha overlay in the overlay encoding's channel order, (H, W, C) uint8."""
        base = rgb[0].permute(1, 2, 0)  # (H, W, 3) RGB float
        mixed = (base * (1.0 - alpha) + color.float() * alpha).round_().to(torch.uint8)
        enc = overlay_encoding(frame.encoding)
        if enc in ('bgr8', 'bgra8'):
            mixed = mixed.flip(-1)  # RGB -> BGR
        if ENCODINGS[enc][2]:  # keep the input's alpha channel
            a = torch.from_numpy(np.ascontiguousarray(frame.image[..., 3:4])).to(self.device)
            mixed = torch.cat([mixed, a], dim=-1)  # (H, W, 4)
        return mixed
