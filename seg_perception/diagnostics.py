"""
Run-time statistics of the node, free of ROS: rates, latency percentiles, drop counters.

:class:`NodeStats` is updated from the subscription callbacks and the worker thread and read by
the diagnostics timer; all its methods take the lock. Times are seconds from any monotonic
clock, passed in by the caller so tests control them.
"""

from collections import deque
from dataclasses import dataclass, field
import threading
from typing import Deque, Dict, Hashable, List, Optional, Tuple

import numpy as np

OUTPUT_NAMES = ('labels', 'color', 'overlay', 'confidence')
# Header stamps further than this from the node's clock are from another clock: no latency.
FAR_STAMP_S = 10.0
# A camera outpaces the node when, over a window with at least OUTPACED_MIN_FRAMES arrivals, at
# least this fraction of its frames were replaced by newer ones before the worker took them.
OUTPACED_FRACTION = 0.2
OUTPACED_MIN_FRAMES = 10


class WindowStats:
    """Events in a sliding time window: their rate and the percentiles of a value (latency)."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 4096,
                 start: float = 0.0) -> None:
        assert window_s > 0
        self.window_s = window_s
        self._start = start
        self._events: Deque[Tuple[float, Optional[float]]] = deque(maxlen=max_samples)

    def add(self, now: float, value: Optional[float] = None) -> None:
        """Record one event at ``now`` with an optional value (None: counts for the rate only)."""
        self._events.append((now, value))

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._events.popleft()

    def rate(self, now: float) -> float:
        """Return events per second over the window (or since ``start`` while it is shorter)."""
        self._trim(now)
        span = min(self.window_s, now - self._start)
        return len(self._events) / span if span > 0 else 0.0

    def times(self, now: float) -> List[float]:
        """Return the times of the events within the window, oldest first."""
        self._trim(now)
        return [t for t, _ in self._events]

    def values(self, now: float) -> List[float]:
        """Return the values recorded within the window."""
        self._trim(now)
        return [v for _, v in self._events if v is not None]

    def percentile(self, q: float, now: float) -> Optional[float]:
        """Return the q-th percentile of the values in the window (q in 0..100), or None."""
        return _percentile(self.values(now), q)


@dataclass
class CameraStats:
    """Counters of one input topic."""

    topic: str
    received: int = 0
    processed: int = 0
    dropped_overwritten: int = 0
    dropped_malformed: int = 0
    dropped_failed: int = 0
    skipped_no_subscribers: int = 0
    last_malformed: Optional[float] = None
    window: WindowStats = field(default_factory=WindowStats)  # published frames
    arrivals: WindowStats = field(default_factory=WindowStats)
    replaced: WindowStats = field(default_factory=WindowStats)  # dropped_overwritten


class NodeStats:
    """Thread-safe counters and windows for every camera and for the forward passes."""

    def __init__(self, topics: List[str], now: float, window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.window_s = window_s
        self.cameras: Dict[str, CameraStats] = {
            t: CameraStats(t, window=WindowStats(window_s, start=now),
                           arrivals=WindowStats(window_s, start=now),
                           replaced=WindowStats(window_s, start=now)) for t in topics}
        self.inference = WindowStats(window_s, start=now)
        self.batches = 0
        self.batch_size_max = 0
        self.computed = {name: 0 for name in OUTPUT_NAMES}

    def received(self, topic: str, now: float) -> None:
        with self._lock:
            cam = self.cameras[topic]
            cam.received += 1
            cam.arrivals.add(now)

    def overwritten(self, topic: str, now: float) -> None:
        """Count a frame replaced by a newer one before the worker took it."""
        with self._lock:
            cam = self.cameras[topic]
            cam.dropped_overwritten += 1
            cam.replaced.add(now)

    def outpaced(self, topic: str, now: float) -> Optional[Tuple[float, float]]:
        """
        Return (camera fps, fps the node takes) when the camera outpaces the node, else None.

        Judged over the window, once at least OUTPACED_MIN_FRAMES frames arrived in it over at
        least half its length: outpaced when at least OUTPACED_FRACTION of them were replaced
        by newer frames before the worker took them. The rates are over the time since the
        window's first arrival.
        """
        with self._lock:
            cam = self.cameras[topic]
            arrivals = cam.arrivals.times(now)
            if len(arrivals) < OUTPACED_MIN_FRAMES or now - arrivals[0] < self.window_s / 2:
                return None
            replaced = len([t for t in cam.replaced.times(now) if t >= arrivals[0]])
            if replaced < OUTPACED_FRACTION * len(arrivals):
                return None
            span = now - arrivals[0]
            return len(arrivals) / span, (len(arrivals) - replaced) / span

    def malformed(self, topic: str, now: float) -> None:
        with self._lock:
            cam = self.cameras[topic]
            cam.dropped_malformed += 1
            cam.last_malformed = now

    def failed(self, topic: str) -> None:
        """Count a frame lost to a failure in its own processing (decode, network, publish)."""
        with self._lock:
            self.cameras[topic].dropped_failed += 1

    def skipped(self, topic: str) -> None:
        """Count a frame not processed because no output had a subscriber."""
        with self._lock:
            self.cameras[topic].skipped_no_subscribers += 1

    def forward(self, now: float, seconds: float, batch_size: int,
                computed: Dict[str, int]) -> None:
        """Record one forward pass and how many frames got each output."""
        with self._lock:
            self.inference.add(now, seconds)
            self.batches += 1
            self.batch_size_max = max(self.batch_size_max, batch_size)
            for name, n in computed.items():
                self.computed[name] += n

    def published(self, topic: str, now: float, latency_s: Optional[float]) -> None:
        """Record a frame whose outputs were published, with its stamp-to-publish latency."""
        with self._lock:
            cam = self.cameras[topic]
            cam.processed += 1
            cam.window.add(now, latency_s)

    def camera_values(self, topic: str, now: float) -> Dict[str, str]:
        """Key/values of one camera, as /diagnostics carries them."""
        with self._lock:
            cam = self.cameras[topic]
            return {
                'topic': topic,
                'fps': _fmt(cam.window.rate(now)),
                'latency_p50_ms': _ms(cam.window.percentile(50, now)),
                'latency_p99_ms': _ms(cam.window.percentile(99, now)),
                'frames_received': str(cam.received),
                'frames_processed': str(cam.processed),
                'dropped_overwritten': str(cam.dropped_overwritten),
                'dropped_malformed': str(cam.dropped_malformed),
                'dropped_failed': str(cam.dropped_failed),
                'skipped_no_subscribers': str(cam.skipped_no_subscribers),
            }

    def recent_malformed(self, topic: str, now: float) -> bool:
        """Tell whether the camera dropped a malformed frame within the window."""
        with self._lock:
            last = self.cameras[topic].last_malformed
            return last is not None and now - last < self.window_s

    def totals(self, now: float) -> Dict[str, str]:
        """Key/values summed over cameras, plus the forward-pass figures."""
        with self._lock:
            cams = list(self.cameras.values())
            latencies = [v for c in cams for v in c.window.values(now)]
            values = {
                'fps': _fmt(sum(c.window.rate(now) for c in cams)),
                'latency_p50_ms': _ms(_percentile(latencies, 50)),
                'latency_p99_ms': _ms(_percentile(latencies, 99)),
                'inference_p50_ms': _ms(self.inference.percentile(50, now)),
                'frames_received': str(sum(c.received for c in cams)),
                'frames_processed': str(sum(c.processed for c in cams)),
                'dropped_overwritten': str(sum(c.dropped_overwritten for c in cams)),
                'dropped_malformed': str(sum(c.dropped_malformed for c in cams)),
                'dropped_failed': str(sum(c.dropped_failed for c in cams)),
                'skipped_no_subscribers': str(sum(c.skipped_no_subscribers for c in cams)),
                'batches': str(self.batches),
                'batch_size_max': str(self.batch_size_max),
            }
            for name, n in self.computed.items():
                values[f'computed_{name}'] = str(n)
            return values


class Throttle:
    """Let one message per key through every ``period_s``; count the ones held back."""

    MAX_KEYS = 256

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: Dict[Hashable, float] = {}
        self._held: Dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable, now: float) -> Tuple[bool, int]:
        """Return (whether to emit now, how many were held back since the last emitted one)."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False, 0
            if len(self._last) >= self.MAX_KEYS:  # forget keys that are quiet again
                self._last = {k: t for k, t in self._last.items() if now - t < self.period_s}
            self._last[key] = now
            return True, self._held.pop(key, 0)


def statistics_line(values: Dict[str, str]) -> str:
    """One camera's statistics log line from its :meth:`NodeStats.camera_values`."""
    return (f'{values["topic"]}: {values["fps"]} fps, latency p50 {values["latency_p50_ms"]} ms '
            f'p99 {values["latency_p99_ms"]} ms, received {values["frames_received"]}, '
            f'processed {values["frames_processed"]}, skipped '
            f'{values["skipped_no_subscribers"]} (no subscribers), dropped '
            f'{values["dropped_overwritten"]} overwritten / {values["dropped_malformed"]} '
            f'malformed / {values["dropped_failed"]} failed')


def stamp_age(sec: int, nanosec: int, now_ns: int) -> Optional[float]:
    """
    Seconds from a header stamp to ``now_ns``; None for an unset (zero) stamp.

    Any stamp is taken: negative or far-future ones give a large age of either sign.
    """
    if sec == 0 and nanosec == 0:
        return None
    return (now_ns - (int(sec) * 1_000_000_000 + int(nanosec))) * 1e-9


def _percentile(values: List[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def _fmt(value: float) -> str:
    return f'{value:.2f}'


def _ms(seconds: Optional[float]) -> str:
    return 'n/a' if seconds is None else f'{seconds * 1e3:.1f}'
