"""The demo's pictures: the overlay video and the contact sheet."""

import itertools
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np

from seg_perception import ros_types
from seg_perception.demo.drive import DemoError, drive_topic, DriveSpec
from seg_training.base.classes import ClassTable

LEGEND_COLUMNS = 10


def read_images(bag: Path, topics: Sequence[str], wanted: Optional[set] = None
                ) -> Dict[Tuple[str, int], np.ndarray]:
    """Decode the Image messages of ``topics`` (optionally only bag times in ``wanted``)."""
    images = {}
    with ros_types.open_reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, t, data in ros_types.read_messages(reader, conns):
            if wanted is None or t in wanted:
                images[(conn.topic, t)] = ros_types.decode_image(data, conn.msgtype).image
    return images


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top left corner of a copy of a BGR image."""
    out = np.ascontiguousarray(image).copy()
    scale = max(0.4, out.shape[0] / 400)
    org = (8, int(22 * scale) + 4)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def write_video(spec: DriveSpec, segmented: Path, path: Path) -> Dict[str, Any]:
    """
    Write the overlays of all cameras side by side at the drive's rate (mp4, 'mp4v').

    One video frame per drive frame, from the first time every camera has an overlay; a frame
    the node dropped shows that camera's previous overlay (as a viewer would have seen it).
    """
    topics = {f'/{cam}/segmentation/overlay': cam for cam in spec.cameras}
    w, h = spec.size
    size = (w * len(spec.cameras), h)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), spec.fps, size)
    if not writer.isOpened():
        raise DemoError(f'{path}: OpenCV cannot write mp4 (mp4v) video here')
    latest: Dict[str, Tuple[int, np.ndarray]] = {}
    frames = 0
    stamps = iter(spec.stamps())
    pending = next(stamps, None)

    def emit_until(limit: Optional[int]) -> None:
        nonlocal pending, frames
        while pending is not None and (limit is None or pending < limit):
            if len(latest) == len(spec.cameras):
                tiles = []
                for cam in spec.cameras:
                    stamp, image = latest[cam]
                    tile = cv2.resize(image, (w, h)) if image.shape[:2] != (h, w) else image
                    text = f'{cam} {(stamp - spec.start_ns) / 1e9:.1f} s'
                    tiles.append(caption(tile[:, :, ::-1], text))
                writer.write(np.concatenate(tiles, axis=1))           # (H, cameras x W, 3)
                frames += 1
            pending = next(stamps, None)

    try:
        with ros_types.open_reader(segmented) as reader:
            conns = [c for c in reader.connections if c.topic in topics]
            messages = ros_types.read_messages(reader, conns)
            for t, group in itertools.groupby(messages, key=lambda m: m[1]):
                emit_until(t)
                for conn, _, data in group:
                    frame = ros_types.decode_image(data, conn.msgtype)
                    rgb = frame.image if frame.encoding != 'bgr8' else frame.image[:, :, ::-1]
                    latest[topics[conn.topic]] = (t, rgb)
            emit_until(None)
    finally:
        writer.release()
    return {'path': str(path), 'frames': frames, 'fps': spec.fps, 'size': list(size)}


def choose_times(spec: DriveSpec, done: Sequence[int], rows: int) -> List[int]:
    """Pick ``rows`` stamps spread over the drive among those segmented for every camera."""
    if not done:
        return []
    picks = np.linspace(0, len(done) - 1, min(rows, len(done))).round().astype(int)
    return [done[i] for i in sorted(set(picks.tolist()))]


def write_contact_sheet(spec: DriveSpec, drive: Path, segmented: Path, times: Sequence[int],
                        classes: Optional[ClassTable], title: str, path: Path) -> Dict[str, Any]:
    """Draw inputs and overlays of every camera at ``times`` (rows), with a colour legend."""
    wanted = set(times)
    inputs = read_images(drive, [drive_topic(c) for c in spec.cameras], wanted)
    overlays = read_images(segmented, [f'/{c}/segmentation/overlay' for c in spec.cameras],
                           wanted)
    cols, rows = 2 * len(spec.cameras), len(times)
    w, h = spec.size
    fig_w, left, right, space = 16.0, 0.35, 0.05, 0.05       # inches
    cell_w = (fig_w - left - right - (cols - 1) * space) / cols
    cell_h = cell_w * h / w
    title_h, legend_h = 0.6, 0.0
    if classes is not None:
        legend_h = 0.3 + 0.22 * math.ceil(len(classes) / LEGEND_COLUMNS)
    fig_h = title_h + rows * cell_h + (rows - 1) * space + legend_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, cols, left=left / fig_w, right=1 - right / fig_w,
                            top=1 - title_h / fig_h, bottom=legend_h / fig_h,
                            wspace=space / cell_w, hspace=space / cell_h)
    for r, stamp in enumerate(times):
        for c, cam in enumerate(spec.cameras):
            for k, (kind, image) in enumerate((
                    ('input', inputs.get((drive_topic(cam), stamp))),
                    ('overlay', overlays.get((f'/{cam}/segmentation/overlay', stamp))))):
                ax = fig.add_subplot(grid[r, 2 * c + k])
                if image is not None:
                    ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f'{cam} camera: {kind}', fontsize=11)
                if c == 0 and k == 0:
                    ax.set_ylabel(f't = {(stamp - spec.start_ns) / 1e9:.1f} s', fontsize=11)
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / fig_h, va='top')
    if classes is not None:
        handles = [Patch(facecolor=np.asarray(col) / 255.0, edgecolor='black', linewidth=0.4,
                         label=name) for name, col in zip(classes.names, classes.colors)]
        fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), LEGEND_COLUMNS),
                   fontsize=9, frameon=False, handlelength=1.2, columnspacing=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return {'path': str(path), 'times_s': [round((t - spec.start_ns) / 1e9, 2) for t in times]}
