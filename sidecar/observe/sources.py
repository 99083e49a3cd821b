"""Where the figures come from: the daemon's counters (read without a lock) and callables the
daemon wires in (``sidecar.app``), plus the store's own figures read on a reader connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sidecar.core.stats import Stats
from sidecar.storage.purge import PurgeResult
from sidecar.storage.reads import Reader, StoreFigures

T = TypeVar("T")


class StoreReads:
    """The store's figures for callers on any thread: one reader connection, one caller at a
    time, closed after each call (HTTP request threads come and go)."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._lock = threading.Lock()

    def read(self, fn: Callable[[Reader], T]) -> T:
        """``fn(reader)`` on this reader's connection, one caller at a time, closed after (the
        web console's pages: at most one of its reads runs at once, whatever the browsers)."""
        with self._lock:
            try:
                return fn(self._reader)
            finally:
                self._reader.close()

    def file_sizes(self) -> tuple[int, int]:
        """``(database bytes, WAL bytes)``: a ``stat`` of each file on SQLite."""
        with self._lock:
            try:
                return self._reader.file_sizes()
            finally:
                self._reader.close()

    def figures(self) -> StoreFigures:
        """Counts and sizes (a ``COUNT`` of the events: for the once-a-minute state, not for
        every scrape)."""
        with self._lock:
            try:
                return self._reader.figures()
            finally:
                self._reader.close()


def _nothing() -> dict[tuple[str, str], int]:
    return {}


def _no_purge() -> tuple[bool, PurgeResult | None]:
    return False, None


@dataclass(frozen=True, kw_only=True)
class Sources:
    """Everything ``/metrics``, ``/healthz`` and the Home Assistant state read."""

    stats: Stats
    store: StoreReads
    queue_depth: Callable[[], int]
    inflight: Callable[[], int]  # QoS 1 messages received, not acked yet
    writer_alive: Callable[[], bool]
    writer_heartbeat: Callable[[], float]  # time.monotonic() of the writer's last loop
    stall_after: float  # seconds without a loop after which the writer counts as stuck
    broker_disconnected_at: Callable[[], float | None]  # monotonic, None while connected
    broker_grace: float  # seconds the broker may be away before /healthz says 503
    replay_streams: Callable[[], int] = lambda: 0
    requests: Callable[[], dict[tuple[str, str], int]] = _nothing  # (op, status) -> count
    purge: Callable[[], tuple[bool, PurgeResult | None]] = _no_purge  # (running, figures)
    clock: Callable[[], float] = field(default=time.monotonic)
