"""
Test-time augmentation: softmax averaged over horizontal flips and input scales.

The network input ``x`` (already resized and normalised, ``(B, 3, h, w)``) is resized to each
scale (sides rounded to multiples of the architecture's stride), run as it is and mirrored, and the
softmax of every run is brought back to ``(h, w)`` (bilinear) and averaged. With ``flip`` the
result is exactly mirror-symmetric: the prediction of a mirrored image is the mirrored prediction.
"""

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import nn
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, h, w) -> (B, K, h, w) logits


@dataclass(frozen=True)
class TTA:
    """Which augmentations to average: ``scales`` relative to the network size, ``flip``."""

    scales: Tuple[float, ...] = (1.0,)
    flip: bool = True

    def __post_init__(self) -> None:
        if not self.scales or any(not 0.25 <= s <= 4.0 for s in self.scales):
            raise ValueError(f'TTA scales {list(self.scales)} must be in [0.25, 4]')

    @property
    def runs(self) -> int:
        """Forward passes per image."""
        return len(self.scales) * (2 if self.flip else 1)

    def describe(self) -> str:
        scales = ','.join(f'{s:g}' for s in self.scales)
        return f'scales {scales}' + (' + flip' if self.flip else '')


def parse_tta(text: str) -> TTA:
    """``'flip'``, ``'flip,0.75,1,1.25'`` or ``'0.75,1.25'`` (scales only) -> TTA."""
    parts = [p.strip() for p in text.split(',') if p.strip()]
    flip = 'flip' in parts
    try:
        scales = tuple(float(p) for p in parts if p != 'flip') or (1.0,)
    except ValueError:
        raise ValueError(f'--tta {text!r}: expected "flip" and/or scales such as '
                         '"flip,0.75,1,1.25"') from None
    return TTA(scales, flip)


def _scaled_size(h: int, w: int, scale: float, stride: int = 8) -> Tuple[int, int]:
    return (max(stride, int(round(h * scale / stride)) * stride),
            max(stride, int(round(w * scale / stride)) * stride))


def tta_probabilities(forward: Forward, x: torch.Tensor, tta: TTA,
                      stride: int = 8) -> torch.Tensor:
    """
    (B, K, h, w) float32 softmax averaged over ``tta``'s runs of ``forward`` on ``x``.

    Rescaled inputs have sides that are multiples of ``stride`` (the network's).
    """
    h, w = x.shape[-2:]
    total = None
    for scale in tta.scales:
        size = _scaled_size(h, w, scale, stride)
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode='bilinear',
                                                    align_corners=False)
        prob = torch.softmax(forward(xs).float(), dim=1)  # (B, K, h', w')
        if tta.flip:  # the pair's sum is mirror-symmetric whatever the order of addition
            prob = prob + torch.softmax(forward(xs.flip(-1)).float(), dim=1).flip(-1)
        if prob.shape[-2:] != (h, w):
            prob = F.interpolate(prob, size=(h, w), mode='bilinear', align_corners=False)
        total = prob if total is None else total + prob
    return total / tta.runs


class TTAModel(nn.Module):
    """``model`` under test-time augmentation: log of the averaged softmax, read as logits."""

    def __init__(self, model: nn.Module, tta: TTA, stride: int = 8) -> None:
        super().__init__()
        self.model = model
        self.tta = tta
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tta_probabilities(self.model, x, self.tta, self.stride).clamp_min(1e-12).log()
