"""Counters shared by the subscriber and the writer (each counter has a single writer thread).

They are plain attributes, read without a lock by whoever reports them (the ``stats`` answer,
``/metrics``, the Home Assistant state): a reader may see a batch half counted, never a torn
number, and the hot path pays no lock.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

# Bucket bounds (upper, inclusive) of the writer's histograms, fixed so that dashboards keep
# their meaning across versions.
BATCH_ROWS_BOUNDS = (1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
COMMIT_SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Buckets:
    """A histogram with fixed bounds, written by one thread only (no lock): ``counts[i]`` is
    how many observations fell in ``(bounds[i-1], bounds[i]]``, the last slot is ``+Inf``."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)``, ending with ``(inf, count)`` (Prometheus'
        ``le`` buckets)."""
        counts = list(self.counts)  # one copy: the writer may move on meanwhile
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    received: int = 0  # messages handed to the writer (network thread)
    events_stored: int = 0  # new rows in events (writer thread)
    duplicates: int = 0  # events ignored because their id was already stored (writer thread)
    dead_letters: int = 0  # rows written to dead_letters (writer thread)
    # dead letters by kind (sidecar.core.reasons.dead_letter_kind; writer thread)
    dead_letter_kinds: dict[str, int] = field(default_factory=dict)
    qos0_dropped: int = 0  # QoS 0 messages dropped because the queue was full (network thread)
    batches: int = 0
    batch_rows: Buckets = field(default_factory=lambda: Buckets(BATCH_ROWS_BOUNDS))
    commit_seconds: Buckets = field(default_factory=lambda: Buckets(COMMIT_SECONDS_BOUNDS))
    projected: int = 0  # kv entries projections changed (writer thread)
    projection_skipped: int = 0  # events a projection could not fold (writer thread)
    write_errors: int = 0
    last_commit_lag_ms: int | None = None  # receive -> commit of the oldest event of the batch
    last_commit_at: float | None = None
