"""
The network-input step, once: resize an RGB image to the network size, then normalise.

Every consumer of a model file runs this one implementation: the node's pipeline, seg-predict and
seg-bag (through ``SegmentationPipeline``), seg-eval and validation in seg-train (through the
validation transform) and the export sidecar (which records the same settings for runtimes
without this package). The settings travel in the model file as the ``preprocess`` entry::

    preprocess  {'resize': 'area' | 'bilinear', 'antialias': bool}

next to the existing ``input_size`` and ``normalization`` entries, which stay where they were
(older readers keep working). The resize, on (B, 3, H, W) float RGB in 0..255:

* ``area``: where the image is at least the network size in both axes, the mean of each output
  pixel's input area (``F.interpolate(mode='area')``; for integer factors such as 2048x1024 to
  512x256 exactly OpenCV's ``INTER_AREA``); otherwise as ``bilinear``.
* ``bilinear``: ``F.interpolate(mode='bilinear', align_corners=False, antialias=antialias)``;
  with antialias the filter widens when shrinking, as PIL's ``Image.BILINEAR`` does.

An image already at the network size is not resized. Then ``(pixel - 255 mean) / (255 std)``.

Files without the entry get a documented default (:func:`legacy_resize`): project model files
written before it were validated with OpenCV area resizing (albumentations ``Resize`` with
``area_for_downscale``) after training on area-shrunk crops, so they get ``area``; the official
ERFNet Cityscapes model was trained on images resized with PIL bilinear, so it gets ``bilinear``
with antialias. The ESPNet authors resized with OpenCV's ``INTER_LINEAR``, which is ``bilinear``
without antialias (the same half-pixel sampling, no widening when shrinking).
"""

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_METHODS = ('area', 'bilinear')
# ImageNet statistics: the default input normalisation of a model trained from scratch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Device = Union[str, torch.device]


@dataclass(frozen=True)
class Resize:
    """How an image is brought to the network size; see the module docstring."""

    method: str = 'area'
    antialias: bool = False

    def __post_init__(self) -> None:
        if self.method not in RESIZE_METHODS:
            raise ValueError(f'resize method {self.method!r} not in {list(RESIZE_METHODS)}')
        if not isinstance(self.antialias, bool):
            raise ValueError(f'resize antialias must be true or false, got {self.antialias!r}')

    def to_dict(self) -> Dict[str, Any]:
        return {'resize': self.method, 'antialias': self.antialias}

    @classmethod
    def from_dict(cls, d: Mapping) -> 'Resize':
        unknown = sorted(set(d) - {'resize', 'antialias'})
        if unknown:
            raise ValueError(f'preprocess has unknown fields {unknown}')
        return cls(str(d['resize']), d.get('antialias', False))

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.method == 'area':
            return ('area average when shrinking (F.interpolate mode=area), bilinear '
                    f'(antialias={self.antialias}) otherwise')
        return f'bilinear, align_corners=False, antialias={self.antialias}'

    def apply(self, rgb: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Resize a (B, 3, H, W) float image to ``size`` (W, H)."""
        w, h = size
        in_h, in_w = rgb.shape[-2:]
        if (in_h, in_w) == (h, w):
            return rgb
        if self.method == 'area' and in_w >= w and in_h >= h:
            return F.interpolate(rgb, size=(h, w), mode='area')  # (B, 3, h, w)
        return F.interpolate(rgb, size=(h, w), mode='bilinear', align_corners=False,
                             antialias=self.antialias)  # (B, 3, h, w)


DEFAULT_RESIZE = Resize('area', False)       # new models: what seg-train's augmentation uses
OFFICIAL_RESIZE = Resize('bilinear', True)   # the official ERFNet: PIL bilinear
OPENCV_LINEAR_RESIZE = Resize('bilinear', False)  # cv2.resize INTER_LINEAR (the ESPNet authors)


def legacy_resize(source_format: str) -> Resize:
    """Resize of a model file that does not record one (see the module docstring)."""
    return OFFICIAL_RESIZE if source_format == 'erfnet_pretrained' else DEFAULT_RESIZE


@dataclass(frozen=True)
class Preprocessing:
    """Network size, resize and normalisation of one model: uint8 RGB in, network input out."""

    size: Tuple[int, int]                  # (W, H) network input
    mean: Tuple[float, float, float]       # of pixels scaled to [0, 1]
    std: Tuple[float, float, float]
    resize: Resize = DEFAULT_RESIZE

    def constants(self, device: Device = 'cpu') -> Tuple[torch.Tensor, torch.Tensor]:
        """(255 mean, 1 / (255 std)) as (1, 3, 1, 1) float32 tensors on ``device``."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255.0)
        return mean, inv_std

    def __call__(self, rgb: torch.Tensor,
                 constants: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """
        Network input (B, 3, h, w) of a (B, 3, H, W) float32 RGB image in 0..255.

        ``constants`` (from :meth:`constants`, on the image's device) saves rebuilding them.
        """
        mean, inv_std = constants if constants is not None else self.constants(rgb.device)
        return (self.resize.apply(rgb, self.size) - mean) * inv_std  # (B, 3, h, w)

    def image(self, rgb: np.ndarray) -> torch.Tensor:
        """Network input (3, h, w) on the CPU of one (H, W, 3) uint8 RGB image."""
        t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]  # (1, 3, H, W)
        return self(t.float())[0]

    def to_dict(self) -> Dict[str, Any]:
        """Everything a runtime needs to reproduce the network input (for export sidecars)."""
        w, h = self.size
        return dict(self.resize.to_dict(), input_size=[w, h], mean=list(self.mean),
                    std=list(self.std), description=self.resize.describe())


def preprocessing(size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                  resize: Resize = DEFAULT_RESIZE) -> Preprocessing:
    """Build a :class:`Preprocessing` from plain sequences."""
    return Preprocessing((int(size[0]), int(size[1])), tuple(float(v) for v in mean),
                         tuple(float(v) for v in std), resize)
