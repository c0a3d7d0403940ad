"""
Segmentation metrics from one confusion matrix, and the evaluation loop that fills it.

Every number comes from a (K, K) matrix of pixel counts indexed ``[target, prediction]``:

* IoU_c = TP / (TP + FP + FN); a class with no pixel in target nor prediction has IoU NaN and is
  left out of the mean (NaN-skip), as in the official Cityscapes evaluator;
* pixel accuracy = trace / total, mean accuracy = mean over present classes of TP / (TP + FN);
* frequency-weighted IoU = sum_c freq_c * IoU_c with freq_c the target share of class c;
* Dice_c = 2 TP / (2 TP + FP + FN).

A ``void_index`` (the catch-all output of the official ERFNet model) is not a class: its row is
dropped (target void pixels count nowhere) but its column stays, so a real pixel predicted as void
is a false negative of its class, exactly as the Cityscapes evaluator counts predictions of
ignored labels.
"""

import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from seg_training.base.classes import IGNORE_INDEX

_logger = logging.getLogger(__name__)

Device = Union[str, torch.device]


class ConfusionMatrix:
    """Pixel counts of (target, prediction) pairs over a whole split, on any device."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 device: Device = 'cpu') -> None:
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        k = self.num_classes
        self.matrix = torch.zeros((k, k), dtype=torch.int64, device=device)  # [target, pred]

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """
        Add a batch: ``pred`` and ``target`` integer tensors of equal shape (B, H, W) or (H, W).

        Target pixels equal to ``ignore_index`` or outside 0..K-1 are skipped; a prediction
        outside 0..K-1 on a counted pixel is an error.
        """
        if pred.shape != target.shape:
            raise ValueError(f'prediction shape {tuple(pred.shape)} != target shape '
                             f'{tuple(target.shape)}')
        k = self.num_classes
        pred = pred.reshape(-1).long()  # (N,)
        target = target.reshape(-1).long().to(pred.device)  # (N,)
        valid = (target != self.ignore_index) & (target >= 0) & (target < k)
        p = pred[valid]
        t = target[valid]
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= k):
            raise ValueError(f'predictions must lie in 0..{k - 1}, got values in '
                             f'{int(p.min())}..{int(p.max())}')
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)  # (K, K)
        self.matrix += counts.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default group; no-op without one."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self, void_index: Optional[int] = None) -> Dict[str, object]:
        """
        All metrics as Python floats (per-class entries are lists with NaN where undefined).

        Keys: ``miou``, ``per_class_iou``, ``pixel_accuracy``, ``mean_accuracy``,
        ``per_class_accuracy``, ``fw_iou``, ``dice``, ``mean_dice``, ``num_pixels``.
        """
        k = self.num_classes
        if void_index is not None and not 0 <= void_index < k:
            raise ValueError(f'void_index {void_index} outside 0..{k - 1}')
        m = self.matrix.detach().to('cpu', torch.float64).clone()  # (K, K)
        if void_index is not None:
            m[void_index, :] = 0.0  # a void target is no class: those pixels count nowhere
        tp = m.diagonal()  # (K,)
        gt = m.sum(1)  # (K,) target pixels per class (TP + FN)
        pr = m.sum(0)  # (K,) predicted pixels per class among counted pixels (TP + FP)
        total = float(m.sum())
        nan = torch.full_like(tp, math.nan)
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        dice = torch.where(gt + pr > 0, 2 * tp / (gt + pr).clamp(min=1), nan)
        if void_index is not None:
            iou[void_index] = acc[void_index] = dice[void_index] = math.nan
        freq = gt / total if total > 0 else torch.zeros_like(gt)
        present = ~torch.isnan(iou)
        return {
            'miou': _nanmean(iou),
            'per_class_iou': _floats(iou),
            'pixel_accuracy': float(tp.sum() / total) if total > 0 else math.nan,
            'mean_accuracy': _nanmean(acc),
            'per_class_accuracy': _floats(acc),
            'fw_iou': float((freq[present] * iou[present]).sum()) if total > 0 else math.nan,
            'dice': _floats(dice),
            'mean_dice': _nanmean(dice),
            'num_pixels': int(total),
        }


def _floats(t: torch.Tensor) -> List[float]:
    return [float(v) for v in t.tolist()]


def _nanmean(t: torch.Tensor) -> float:
    keep = t[~torch.isnan(t)]
    return float(keep.mean()) if keep.numel() else math.nan


def _batch(item) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, dict):
        return item['image'], item['target']
    return item[0], item[1]


@torch.no_grad()
def predict_labels(model: torch.nn.Module, images: torch.Tensor,
                   size: Optional[Tuple[int, int]] = None, amp: bool = False) -> torch.Tensor:
    """
    Argmax class per pixel (B, H, W) at ``size`` (H, W); low-resolution logits are upsampled.

    ``images`` is a normalised (B, 3, H, W) float batch on the model's device.
    """
    with torch.autocast(device_type=images.device.type, enabled=amp and images.is_cuda):
        logits = model(images)  # (B, K, h, w)
    size = tuple(size) if size is not None else tuple(images.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode='bilinear',
                               align_corners=False)  # (B, K, H, W)
    return logits.argmax(1)  # (B, H, W)


def evaluate(model: torch.nn.Module, loader: Iterable, num_classes: int, device: Device,
             void_index: Optional[int] = None, amp: bool = False,
             progress: bool = False) -> Tuple[Dict[str, object], ConfusionMatrix]:
    """
    Run ``model`` over ``loader`` and return (metrics, confusion matrix).

    ``loader`` yields (image float (B, 3, H, W) normalised, target long (B, H, W), 255 = ignore).
    The model runs in eval mode under ``torch.inference_mode`` (its previous mode is restored);
    logits smaller than the target (encoder-only stage) are upsampled bilinearly before the
    argmax. Under torch.distributed the matrix is summed over all processes.
    """
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, device=device)
    was_training = model.training
    model.eval()
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc='eval', unit='batch', leave=False)
    try:
        with torch.inference_mode():
            for item in batches:
                images, targets = _batch(item)
                images = images.to(device, non_blocking=True)  # (B, 3, H, W)
                targets = targets.to(device, non_blocking=True)  # (B, H, W)
                pred = predict_labels(model, images, tuple(targets.shape[-2:]), amp)
                cm.update(pred, targets)
    finally:
        model.train(was_training)
    cm.all_reduce()
    metrics = cm.compute(void_index)
    _logger.info('evaluated %d pixels: mIoU %.4f, pixel accuracy %.4f', metrics['num_pixels'],
                 metrics['miou'], metrics['pixel_accuracy'])
    return metrics, cm


def cityscapes_evaluator(gt_paths: Sequence[str], prediction_dir: str) -> Dict[str, Any]:
    """
    Score predictions with cityscapesscripts' own pixel-level evaluator (class IoU only).

    ``gt_paths`` are ``*_gtFine_labelIds.png`` files; ``prediction_dir`` holds one labelIds PNG
    per image, found by the evaluator's own name matching. Returns its result dict
    (``averageScoreClasses`` is the mIoU, ``classScores`` the IoU by class name).
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.CArgs()
    vars(args).update(vars(ev.args))
    args.evalInstLevelScore = False  # no instanceIds files: class IoU only
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.predictionPath = str(prediction_dir)
    args.predictionWalk = None
    gts = [str(g) for g in gt_paths]
    return ev.evaluateImgLists([ev.getPrediction(args, g) for g in gts], gts, args)
