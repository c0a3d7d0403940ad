"""
Segmentation losses with ignore 255 and class weights (the ENet/ERFNet recipe).

Class weights ``w_c = 1 / ln(c + p_c)`` with ``p_c`` the share of class c among the labelled
training pixels and ``c = 1.10`` (Paszke et al., ENet, 2016; used by ERFNet): rare classes weigh
up to ``1 / ln(1.10) ~ 10.5``, a class covering everything ``1 / ln(2.10) ~ 1.35``.
"""

import logging
import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from seg_training.base.classes import IGNORE_INDEX

_logger = logging.getLogger(__name__)

LOSS_NAMES = ('ce', 'focal', 'dice', 'ce_dice')


def enet_class_weights(histogram: Union[np.ndarray, Sequence[int], torch.Tensor],
                       c: float = 1.10) -> torch.Tensor:
    """(K,) float32 weights ``1 / ln(c + p_k)`` from per-class pixel counts."""
    hist = torch.as_tensor(np.asarray(histogram, dtype=np.float64))  # (K,)
    if hist.ndim != 1 or hist.numel() == 0:
        raise ValueError(f'histogram must be a non-empty vector, got shape {tuple(hist.shape)}')
    if (hist < 0).any():
        raise ValueError('histogram counts must be >= 0')
    if c <= 1.0:
        raise ValueError(f'c must be > 1 so that every weight is finite and positive, got {c}')
    total = float(hist.sum())
    if total <= 0:
        raise ValueError('histogram has no labelled pixel: cannot weight classes')
    p = hist / total
    return (1.0 / torch.log(c + p)).float()


class FocalLoss(nn.Module):
    """
    Focal loss (Lin et al., 2017): ``-w_t (1 - p_t)^gamma log p_t``, mean over labelled pixels.

    With ``gamma = 0`` it equals weighted cross-entropy (normalised by the summed weights).
    """

    def __init__(self, weight: Optional[torch.Tensor] = None, gamma: float = 2.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.register_buffer('weight', weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)  # (B, K, H, W)
        valid = target != self.ignore_index  # (B, H, W)
        t = torch.where(valid, target, torch.zeros_like(target))  # (B, H, W)
        logp_t = logp.gather(1, t.unsqueeze(1)).squeeze(1)  # (B, H, W)
        p_t = logp_t.exp()
        w = self.weight[t] if self.weight is not None else torch.ones_like(logp_t)
        w = w * valid
        loss = -w * (1.0 - p_t).pow(self.gamma) * logp_t  # (B, H, W)
        return loss.sum() / w.sum().clamp(min=1e-12)


class DiceLoss(nn.Module):
    """
    Soft Dice loss ``1 - mean_k (2 |P_k G_k| + s) / (|P_k| + |G_k| + s)`` over labelled pixels.

    ``weight`` turns the class mean into a weighted mean; ``smooth`` keeps absent classes finite.
    """

    def __init__(self, weight: Optional[torch.Tensor] = None, smooth: float = 1.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.smooth = float(smooth)
        self.ignore_index = ignore_index
        self.register_buffer('weight', weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        prob = F.softmax(logits.float(), dim=1)  # (B, K, H, W)
        valid = (target != self.ignore_index).unsqueeze(1)  # (B, 1, H, W)
        t = torch.where(valid.squeeze(1), target, torch.zeros_like(target))  # (B, H, W)
        onehot = F.one_hot(t, k).permute(0, 3, 1, 2).float() * valid  # (B, K, H, W)
        prob = prob * valid
        inter = (prob * onehot).sum((0, 2, 3))  # (K,)
        card = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))  # (K,)
        dice = (2 * inter + self.smooth) / (card + self.smooth)  # (K,)
        if self.weight is None:
            return 1.0 - dice.mean()
        return 1.0 - (dice * self.weight).sum() / self.weight.sum()


class SumLoss(nn.Module):
    """``sum_i w_i * loss_i(logits, target)``: e.g. cross-entropy plus weighted Dice."""

    def __init__(self, parts: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(parts) != len(weights):
            raise ValueError(f'{len(parts)} losses but {len(weights)} weights')
        self.parts = nn.ModuleList(parts)
        self.weights = [float(w) for w in weights]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * part(logits, target) for part, w in zip(self.parts, self.weights))


def build_loss(name: str, weight: Optional[torch.Tensor] = None, gamma: float = 2.0,
               ignore_index: int = IGNORE_INDEX, dice_weight: float = 1.0) -> nn.Module:
    """``ce``, ``focal``, ``dice`` or ``ce_dice`` (ce + dice_weight * dice), ignoring 255."""
    if name == 'ce':
        return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    if name == 'focal':
        return FocalLoss(weight, gamma, ignore_index)
    if name == 'dice':
        return DiceLoss(weight, ignore_index=ignore_index)
    if name == 'ce_dice':
        return SumLoss([nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index),
                        DiceLoss(weight, ignore_index=ignore_index)], [1.0, dice_weight])
    raise ValueError(f'unknown loss {name!r}; choose one of {list(LOSS_NAMES)}')


def describe_weights(names: Sequence[str], weight: torch.Tensor) -> str:
    """'road 2.1, sky 3.4, ...' for logs."""
    return ', '.join(f'{n} {w:.2f}' for n, w in zip(names, weight.tolist())
                     if not math.isnan(w))
