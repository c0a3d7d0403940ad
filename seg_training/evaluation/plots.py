"""
Training and evaluation plots as PNG files: curves, per-class IoU, confusion, sample panels.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend switch), written to a temporary file next to the target and renamed over it.
"""

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch

from seg_training.base.files import atomic_path

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor]
LOSS_COLUMNS = ('train_loss', 'train_ce', 'train_kd', 'val_loss')  # ce, kd: distillation
MIOU_COLUMNS = ('val_miou', 'train_miou')


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def literal(text: str) -> str:
    """``text`` as matplotlib draws it verbatim: a ``$`` would start mathtext (``$x_1$``)."""
    return str(text).replace('$', r'\$')


def draw_safely(out_png: PathLike, draw: Callable[[], Any]) -> Optional[str]:
    """
    Run ``draw``, which writes the plot ``out_png``; return None, or what failed (logged).

    Plots come after the results they show and must never cost them: any failure is a warning
    naming the plot.
    """
    try:
        draw()
    except Exception as e:  # matplotlib raises many types (text it cannot lay out, ...)
        message = f'{out_png} not plotted: {type(e).__name__}: {e}'
        _logger.warning('%s', message)
        return message
    return None


def _save(fig: Figure, out_png: PathLike) -> Path:
    """Write ``fig`` as PNG to a temporary file in the target folder, then rename it."""
    out = Path(out_png)
    with atomic_path(out, suffix='.png') as tmp:
        fig.savefig(tmp, format='png', bbox_inches='tight')
    _logger.debug('wrote %s', out)
    return out


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_csv_columns(csv_path: PathLike) -> Dict[str, List[float]]:
    """Numeric columns of a CSV with a header row; empty or non-numeric cells become NaN."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: training CSV not found')
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f'{path}: CSV has no header row')
        columns: Dict[str, List[float]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                columns[name].append(_float(row.get(name)))
    return columns


def plot_curves(csv_path: PathLike, out_png: PathLike) -> Path:
    """
    Loss and mIoU (and learning rate, when logged) against epoch from the training CSV.

    The CSV header decides what is drawn: ``train_loss``/``val_loss`` on the first panel,
    ``val_miou`` on the second, ``lr`` on a third; missing columns are simply left out.
    """
    cols = read_csv_columns(csv_path)
    n = len(next(iter(cols.values()))) if cols else 0
    if n == 0:
        raise ValueError(f'{csv_path}: training CSV has no rows to plot')
    epochs = cols.get('epoch') or list(range(1, n + 1))
    logged = [c for c in cols if any(math.isfinite(v) for v in cols[c])]
    panels = [('loss', [c for c in LOSS_COLUMNS if c in logged]),
              ('mIoU', [c for c in MIOU_COLUMNS if c in cols]),
              ('learning rate', ['lr'] if 'lr' in cols else [])]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        raise ValueError(f'{csv_path}: none of the columns {LOSS_COLUMNS + MIOU_COLUMNS + ("lr",)}'
                         f' in header {list(cols)}')
    fig = _new_figure(4.5 * len(panels), 3.5)
    for i, (title, names) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name in names:
            ax.plot(epochs, cols[name], marker='o', markersize=3, label=literal(name))
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if title == 'mIoU':
            ax.set_ylim(0.0, 1.0)
        if title == 'learning rate':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
        if len(names) > 1 or title != 'learning rate':
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_per_class_iou(names: Sequence[str], ious: Sequence[float], out_png: PathLike) -> Path:
    """Horizontal IoU bar per class; classes without pixels (NaN) are marked n/a."""
    if len(names) != len(ious):
        raise ValueError(f'{len(names)} class names but {len(ious)} IoU values')
    values = [math.nan if v is None else float(v) for v in ious]
    present = [v for v in values if not math.isnan(v)]
    fig = _new_figure(6.0, 0.9 + 0.3 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    ax.barh(y, [0.0 if math.isnan(v) else v for v in values], color='tab:blue')
    for yi, v in zip(y, values):
        ax.text(0.01 if math.isnan(v) else v + 0.01, yi, 'n/a' if math.isnan(v) else f'{v:.3f}',
                va='center', fontsize=8, color='gray' if math.isnan(v) else 'black')
    ax.set_yticks(y)
    ax.set_yticklabels([literal(n) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.1)
    ax.set_xlabel('IoU')
    miou = f'{np.mean(present):.3f}' if present else 'n/a'
    ax.set_title(f'per-class IoU (mIoU {miou})')
    fig.tight_layout()
    return _save(fig, out_png)


def plot_confusion(matrix: ArrayLike, names: Sequence[str], out_png: PathLike) -> Path:
    """
    Row-normalised confusion matrix (rows: ground truth, columns: prediction), log colours.

    Cells are annotated with their share of the row when the table is small enough to read.
    """
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    k = len(names)
    if m.shape != (k, k):
        raise ValueError(f'confusion matrix shape {m.shape} does not match {k} class names')
    rows = m.sum(1, keepdims=True)  # (K, 1)
    with np.errstate(invalid='ignore', divide='ignore'):
        norm = np.where(rows > 0, m / np.maximum(rows, 1), np.nan)  # (K, K)
    shown = np.ma.masked_where(~(norm > 0), norm)  # zeros and empty rows stay blank
    side = max(4.0, 0.45 * k + 2.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap='viridis', norm=LogNorm(vmin=1e-4, vmax=1.0),
                   interpolation='nearest')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='share of ground-truth row')
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels([literal(n) for n in names], rotation=90, fontsize=8)
    ax.set_yticklabels([literal(n) for n in names], fontsize=8)
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f'{norm[i, j]:.2f}', ha='center', va='center', fontsize=6,
                            color='black' if norm[i, j] > 0.3 else 'white')
    ax.set_title('confusion matrix (row-normalised)')
    fig.tight_layout()
    return _save(fig, out_png)


def _image_uint8(img: ArrayLike) -> np.ndarray:
    """(H, W, 3) uint8 from uint8 HWC, or float [0, 1] HWC/CHW arrays or tensors."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f'sample image must be (H, W, 3) or (3, H, W), got {a.shape}')
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return a


def _labels(lbl: ArrayLike) -> np.ndarray:
    a = lbl.detach().cpu().numpy() if isinstance(lbl, torch.Tensor) else np.asarray(lbl)
    if a.ndim != 2:
        raise ValueError(f'label map must be (H, W), got {a.shape}')
    return np.clip(a.astype(np.int64), 0, 255)


def colorize(labels: ArrayLike, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of a label map through a (256, 3) palette."""
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.shape != (256, 3):
        raise ValueError(f'palette must be (256, 3) uint8, got {palette.shape}')
    return palette[_labels(labels)]


def plot_samples(images: Sequence[ArrayLike], preds: Sequence[ArrayLike],
                 gts: Sequence[ArrayLike], palette: np.ndarray, out_png: PathLike,
                 alpha: float = 0.5) -> Path:
    """
    One row per sample: image | prediction | ground truth | prediction overlaid on the image.

    ``images`` are RGB (H, W, 3) uint8 (or float in [0, 1], HWC or CHW); ``preds`` and ``gts``
    are (H, W) class maps (255 = ignore, drawn with palette entry 255).
    """
    n = len(images)
    if n == 0 or len(preds) != n or len(gts) != n:
        raise ValueError(f'need equally many images, predictions and ground truths, got '
                         f'{n}, {len(preds)}, {len(gts)}')
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    first = _image_uint8(images[0])
    aspect = first.shape[0] / first.shape[1]
    fig = _new_figure(12.0, max(1.0, 3.0 * aspect) * n + 0.4)
    titles = ('image', 'prediction', 'ground truth', 'overlay')
    for r in range(n):
        img = _image_uint8(images[r])
        pred = colorize(preds[r], palette)
        gt = colorize(gts[r], palette)
        if pred.shape != img.shape or gt.shape != img.shape:
            raise ValueError(f'sample {r}: image {img.shape[:2]}, prediction {pred.shape[:2]} '
                             f'and ground truth {gt.shape[:2]} sizes differ')
        over = ((1.0 - alpha) * img + alpha * pred + 0.5).astype(np.uint8)
        for c, panel in enumerate((img, pred, gt, over)):
            ax = fig.add_subplot(n, 4, r * 4 + c + 1)
            ax.imshow(panel, interpolation='nearest')
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)
