"""The demo's synthetic drive: its parameters and its recording as a rosbag2 (mcap)."""

from dataclasses import asdict, dataclass
import json
import logging
from pathlib import Path
from typing import List, Optional, Tuple

from tqdm import tqdm
import yaml

from seg_perception import ros_types
from seg_perception.bag import AtomicBagWriter
from seg_training.synth import render_sequence

_logger = logging.getLogger(__name__)

CAMERAS = ('front', 'rear')
OUTPUTS = ('labels', 'color', 'overlay')
FPS = 10.0                            # the synthetic world moves in steps of 0.1 s
START_NS = 1_700_000_000_000_000_000  # header stamp of the first frame (a fixed date)
DRIVE_KEY = 'seg_perception.demo_drive'


class DemoError(RuntimeError):
    """The demo cannot go on; the message says which step failed and where its log is."""


@dataclass(frozen=True)
class DriveSpec:
    """The synthetic drive's parameters; the same parameters give the same bag."""

    seed: int = 7
    seconds: float = 12.0
    size: Tuple[int, int] = (512, 256)     # (W, H) of both cameras
    domain: str = 'source'
    fps: float = FPS
    start_ns: int = START_NS
    cameras: Tuple[str, ...] = CAMERAS

    @property
    def n_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    def stamps(self) -> List[int]:
        """Return the header stamp in ns of each frame, the same for every camera (one trigger)."""
        return [self.start_ns + int(round(i * 1e9 / self.fps)) for i in range(self.n_frames)]

    def to_json(self) -> str:
        d = asdict(self)
        d['size'], d['cameras'] = list(self.size), list(self.cameras)
        return json.dumps(d, sort_keys=True)


def drive_topic(camera: str) -> str:
    return f'/{camera}/image'


def frame_id(camera: str) -> str:
    return f'{camera}_camera'


def recorded_spec(path: Path) -> Optional[str]:
    """Return the drive parameters stored in a bag's metadata, or None for no such demo bag."""
    try:
        meta = yaml.safe_load((path / 'metadata.yaml').read_text())
        return meta['rosbag2_bagfile_information']['custom_data'][DRIVE_KEY]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def record_drive(spec: DriveSpec, path: Path, progress: bool = True) -> bool:
    """
    Write the drive as an mcap rosbag2 at ``path`` unless it holds this drive already.

    Returns True when the bag was (re)written. The bag appears only when complete.
    """
    if recorded_spec(path) == spec.to_json():
        return False
    ts = ros_types.typestore()
    w, h = spec.size
    frames = {cam: render_sequence(spec.seed, spec.n_frames, (w, h), spec.domain, view=cam)
              for cam in spec.cameras}
    with AtomicBagWriter(path, 'mcap', overwrite=True) as writer:
        writer.set_custom_data(DRIVE_KEY, spec.to_json())
        conns = {cam: writer.add_connection(drive_topic(cam), ros_types.IMAGE, typestore=ts)
                 for cam in spec.cameras}
        for stamp in tqdm(spec.stamps(), desc='recording the drive', unit='frame',
                          disable=not progress, dynamic_ncols=True):
            for cam in spec.cameras:
                rgb, _ = next(frames[cam])                          # (H, W, 3) uint8
                header = ros_types.make_header(stamp, frame_id(cam))
                writer.write(conns[cam], stamp, ros_types.image_cdr(header, rgb, 'rgb8'))
    return True
