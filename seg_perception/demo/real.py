"""
The demo's real frames: the default model on the bundled CamVid frames, next to their hand labels.

The frames (``samples/camvid``, CC BY-NC 4.0) are real street scenes no bundled model trained on.
The model segments them through the node's own pipeline; the sheet shows each frame, the model's
overlay and the hand labels, and the summary gives the mIoU against those labels (a Cityscapes
model is scored through ``config/class_maps/camvid_from_cityscapes.yaml``).
"""

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline
from seg_perception.resources import find_resource
from seg_training.base.classes import ClassTable
from seg_training.datasets.formats import CAMVID
from seg_training.nets.checkpoint import load_model

_logger = logging.getLogger(__name__)

CLASS_MAP = Path('config') / 'class_maps' / 'camvid_from_cityscapes.yaml'


def class_map_for(model_classes: ClassTable) -> Optional[Path]:
    """Return the bundled class map a model needs to be scored on CamVid (None: its own)."""
    names = [n for i, n in enumerate(model_classes.names) if i != model_classes.void_index]
    return None if names == list(CAMVID.names) else find_resource(CLASS_MAP)


def segment_real_frames(model_path: Path, samples: Path, out_png: Path,
                        device: str = 'cpu') -> Dict[str, Any]:
    """Draw the sheet of real frames at ``out_png``; return the scores for the summary."""
    import torch

    from seg_training.datasets.build import build_dataset
    from seg_training.evaluation.metrics import ConfusionMatrix
    from seg_training.evaluation.seg_eval import mapped_classes

    model, info = load_model(model_path)
    pipe = SegmentationPipeline(model, info, device=device, accelerate='none', warmup=False)
    ds = build_dataset('camvid', samples, 'test')  # masks read as seg-eval reads them
    cmap_file = class_map_for(info.classes)
    scored, lookup = info.classes, None
    if cmap_file is not None:  # a Cityscapes model: its classes scored as CamVid's
        scored, lookup, _ = mapped_classes(cmap_file, info.classes, ds.classes,
                                           str(model_path), str(samples))
    cm = ConfusionMatrix(scored.num_classes)
    rows: List[tuple] = []
    for index, (path, _) in enumerate(ds.samples):
        rgb, truth = ds.load(index)
        result = pipe([Frame(rgb, 'rgb8')], Outputs(labels=True, color=False, overlay=True))[0]
        labels = result.labels if lookup is None else lookup[result.labels]
        cm.update(torch.from_numpy(labels), torch.from_numpy(truth))
        rows.append((path.name, rgb, result.overlay, CAMVID.palette()[truth]))
    metrics = cm.compute(scored.void_index)
    per_class = {n: (None if np.isnan(v) else float(v))
                 for n, v in zip(CAMVID.names, metrics['per_class_iou'])}
    _draw(rows, f'{model_path.name} on real CamVid frames (hand labels on the right): mIoU '
          f'{metrics["miou"]:.3f} over these {len(rows)} frames', out_png)
    return {'model': str(model_path), 'frames': [r[0] for r in rows],
            'miou': float(metrics['miou']), 'per_class_iou': per_class,
            'class_map': str(cmap_file) if cmap_file else None,
            'input_size': list(pipe.input_size), 'sheet': str(out_png)}


def _draw(rows: List[tuple], title: str, path: Path) -> None:
    cols = ('frame', 'model overlay', 'hand labels')
    fig = Figure(figsize=(12, 0.6 + 3.0 * len(rows)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (name, *panels) in enumerate(rows):
        for c, image in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=11)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
