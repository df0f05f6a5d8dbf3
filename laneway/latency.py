"""Latency windows: the last N durations of a backend or a lane, and their percentiles.

A fixed-size ring: recording is O(1) and never allocates once the ring is full (it runs after
every upstream call); percentiles sort a copy, and are only asked for by ranking snapshots, the
admin API and /metrics. Safe under concurrent use from threads as well as tasks: one lock guards
the ring, held for a few bytecodes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_SIZE = 128


@dataclass(frozen=True, slots=True)
class LatencySummary:
    samples: int
    p50: float | None  # seconds; None without samples
    p95: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"samples": self.samples, "p50": self.p50, "p95": self.p95}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1): a value that was observed."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class LatencyWindow:
    def __init__(self, size: int = DEFAULT_SIZE, samples: Iterable[float] = ()) -> None:
        if size < 1:
            raise ValueError("a latency window holds at least one sample")
        self.size = size
        self._ring: list[float] = []
        self._next = 0  # where the next sample goes once the ring is full
        self._lock = threading.Lock()
        for sample in samples:
            self.record(sample)

    def record(self, seconds: float) -> None:
        if not (seconds >= 0 and math.isfinite(seconds)):
            return  # a clock step or a bug upstream of us; one bad sample must not poison the window
        with self._lock:
            if len(self._ring) < self.size:
                self._ring.append(seconds)
            else:
                self._ring[self._next] = seconds
                self._next = (self._next + 1) % self.size

    def samples(self) -> list[float]:
        """The samples, oldest first."""
        with self._lock:
            return self._ring[self._next :] + self._ring[: self._next]

    def summary(self) -> LatencySummary:
        ordered = sorted(self.samples())
        if not ordered:
            return LatencySummary(0, None, None)
        return LatencySummary(len(ordered), percentile(ordered, 0.50), percentile(ordered, 0.95))

    def __len__(self) -> int:
        return len(self._ring)

    def __repr__(self) -> str:
        s = self.summary()
        return f"<LatencyWindow: {s.samples}/{self.size} samples, p50={s.p50}, p95={s.p95}>"
