"""The demo's latency analysis: publish and receipt times per frame and camera."""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from seg_perception import ros_types
from seg_perception.demo.drive import drive_topic, DriveSpec, OUTPUTS
from seg_perception.demo.graph import Recorder


def publish_times(clock_points: Sequence[Tuple[int, int]], stamps: Sequence[int],
                  rate: float = 1.0) -> np.ndarray:
    """
    Return the wall time (ns, float) at which replay published each stamp.

    Replay sends ``/clock`` = a frame's stamp right before the frame, so the first /clock message
    with that value gives its publish time. For a stamp without one (e.g. sent before this
    subscription matched), the /clock ticks give it: replay ticks ``clock = first + rate x
    (wall - start)``, so ``wall - clock / rate`` is a constant plus delays, whose minimum
    maps any stamp to the time it was due.
    """
    if not clock_points:
        return np.full(len(stamps), np.nan)
    points = np.array(sorted(clock_points), dtype=np.int64)     # (N, 2) by clock, then wall
    clock, first = np.unique(points[:, 0], return_index=True)     # first = earliest publish
    wall = points[first, 1]
    c0, w0 = int(clock[0]), int(wall[0])
    offset = np.min((wall - w0) - (clock - c0) / rate)             # ns, after w0
    exact = dict(zip(clock.tolist(), wall.tolist()))
    return np.array([exact[s] if s in exact else w0 + offset + (s - c0) / rate for s in stamps],
                    dtype=np.float64)


def percentiles_ms(values_ns: Sequence[float]) -> Dict[str, Optional[float]]:
    """Return p50/p90/p99/max/mean in ms (None without values)."""
    v = np.asarray(values_ns, dtype=np.float64) / 1e6
    if v.size == 0:
        return {k: None for k in ('p50', 'p90', 'p99', 'max', 'mean')}
    return {'p50': round(float(np.percentile(v, 50)), 1),
            'p90': round(float(np.percentile(v, 90)), 1),
            'p99': round(float(np.percentile(v, 99)), 1),
            'max': round(float(v.max()), 1), 'mean': round(float(v.mean()), 1)}


@dataclass
class FrameTimes:
    """Wall times (ns) of the frames of one camera whose every output arrived, by stamp."""

    stamps: List[int]
    published: np.ndarray        # replay published the frame
    node_published: np.ndarray   # the node published its last output
    received: np.ndarray         # the last output arrived here

    @classmethod
    def of(cls, recorder: Recorder, camera: str, rate: float) -> 'FrameTimes':
        arrivals = [recorder.arrivals[(camera, n)] for n in OUTPUTS]
        done = sorted(set.intersection(*(set(a) for a in arrivals)))
        times = np.array([[max(a[s][k] for a in arrivals) for k in (0, 1)] for s in done],
                         dtype=np.float64).reshape(-1, 2)       # (frames, 2)
        return cls(done, publish_times(recorder.clock_points, done, rate), times[:, 0],
                   times[:, 1])


def camera_summary(spec: DriveSpec, recorder: Recorder, camera: str,
                   rate: float) -> Dict[str, Any]:
    """Frames, drops, fps, latency and stamp checks of one camera."""
    stamps = spec.stamps()
    arrivals = {n: recorder.arrivals[(camera, n)] for n in OUTPUTS}
    times = FrameTimes.of(recorder, camera, rate)
    latency = times.received - times.published
    in_node = times.node_published - times.published
    st = recorder.camera_status(camera) or {}
    ids = set().union(*(recorder.frame_ids[(camera, n)] for n in OUTPUTS))
    return {
        'topic': drive_topic(camera),
        'frames_sent': len(stamps),
        'node_frames_received': int(st.get('frames_received', 0)),
        'node_frames_processed': int(st.get('frames_processed', 0)),
        'dropped_overwritten': int(st.get('dropped_overwritten', 0)),
        'dropped_malformed': int(st.get('dropped_malformed', 0)),
        'outputs_received': {n: len(a) for n, a in arrivals.items()},
        'outputs_lost': recorder.missing(camera),
        'frames_with_all_outputs': len(times.stamps),
        # frames segmented per second of replayed drive
        'fps': round(int(st.get('frames_processed', 0)) * spec.fps * rate / len(stamps), 2),
        'latency_ms': percentiles_ms(latency[np.isfinite(latency)]),
        'node_publish_latency_ms': percentiles_ms(in_node[np.isfinite(in_node)]),
        'node_sim_latency_ms': {'p50': st.get('latency_p50_ms'),
                                'p99': st.get('latency_p99_ms')},
        'stamps_match_input': all(set(a) <= set(stamps) for a in arrivals.values()),
        'frame_ids': sorted(ids),
    }


def write_frames_csv(spec: DriveSpec, recorder: Recorder, rate: float, path: Path) -> None:
    """Write one row per segmented frame: camera, stamp, publish and receipt times, latency."""
    with open(path, 'w', newline='') as f:
        out = csv.writer(f)
        out.writerow(['camera', 'stamp', 'drive_time_s', 'replay_published_wall_ns',
                      'node_published_wall_ns', 'received_wall_ns', 'node_latency_ms',
                      'latency_ms'])
        for cam in spec.cameras:
            t = FrameTimes.of(recorder, cam, rate)
            for stamp, pub, node, rec in zip(t.stamps, t.published, t.node_published,
                                             t.received):
                out.writerow([cam, ros_types.format_time(stamp),
                              f'{(stamp - spec.start_ns) / 1e9:.1f}', f'{pub:.0f}', f'{node:.0f}',
                              f'{rec:.0f}', f'{(node - pub) / 1e6:.1f}',
                              f'{(rec - pub) / 1e6:.1f}'])
