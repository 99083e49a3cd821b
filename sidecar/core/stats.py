"""Counters shared by the subscriber and the writer (each counter has a single writer thread)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    received: int = 0  # messages handed to the writer (network thread)
    events_stored: int = 0  # new rows in events (writer thread)
    duplicates: int = 0  # events ignored because their id was already stored (writer thread)
    dead_letters: int = 0  # rows written to dead_letters (writer thread)
    qos0_dropped: int = 0  # QoS 0 messages dropped because the queue was full (network thread)
    batches: int = 0
    projected: int = 0  # kv entries projections changed (writer thread)
    projection_skipped: int = 0  # events a projection could not fold (writer thread)
    write_errors: int = 0
    last_commit_lag_ms: int | None = None  # receive -> commit of the oldest event of the batch
    last_commit_at: float | None = None
