"""
Per-stage timing for the pipeline and the node: free when off, percentiles when on.

Code that can be timed takes a ``timer`` argument and wraps each stage in ``with timer('name'):``.
The default :data:`NO_TIMER` hands back one shared do-nothing context manager. A
:class:`StageTimer` adds up the seconds of each stage within a record (one frame or one batch),
and :meth:`StageTimer.next` closes the record. On CUDA it synchronises at the end of each stage
so the time lands on the stage that queued the work (timing changes what it measures a little;
leave it off in production).
"""

from collections import defaultdict
import time
from typing import Dict, List, Optional

import numpy as np
import torch


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _Null()


class NoTimer:
    """The timer that times nothing."""

    enabled = False

    def __call__(self, name: str) -> _Null:
        return _NULL

    def add(self, name: str, seconds: float) -> None:
        """Record nothing."""

    def next(self) -> Dict[str, float]:
        """Close no record."""
        return {}


NO_TIMER = NoTimer()


class _Stage:
    __slots__ = ('timer', 'name', 't0')

    def __init__(self, timer: 'StageTimer', name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.timer.device is not None:
            torch.cuda.synchronize(self.timer.device)
        self.timer.add(self.name, time.perf_counter() - self.t0)


class StageTimer:
    """Seconds per stage, summed within a record; records kept up to ``max_records``."""

    enabled = True

    def __init__(self, device: Optional[torch.device] = None, max_records: int = 10000) -> None:
        self.device = device if device is not None and device.type == 'cuda' else None
        self.max_records = max_records
        self.current: Dict[str, float] = defaultdict(float)
        self.records: List[Dict[str, float]] = []

    def __call__(self, name: str) -> _Stage:
        return _Stage(self, name)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` of the current record."""
        self.current[name] += seconds

    def next(self) -> Dict[str, float]:
        """Close the current record (if it has any stage) and return it."""
        record = dict(self.current)
        if record:
            self.records.append(record)
            del self.records[:-self.max_records]
        self.current = defaultdict(float)
        return record

    def clear(self) -> None:
        self.current = defaultdict(float)
        self.records = []

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Per stage, in first-seen order: n, p50_ms, p99_ms, mean_ms over the records."""
        names: List[str] = []
        for r in self.records:
            names += [n for n in r if n not in names]
        out = {}
        for name in names:
            ms = np.array([r[name] for r in self.records if name in r]) * 1e3
            out[name] = {'n': int(ms.size), 'p50_ms': round(float(np.median(ms)), 3),
                         'p99_ms': round(float(np.percentile(ms, 99)), 3),
                         'mean_ms': round(float(ms.mean()), 3)}
        return out
