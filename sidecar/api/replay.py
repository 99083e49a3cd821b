"""Replay streams: one thread per stream, its own read connection, bounded QoS 1 in flight.

A stream reads matching events in ``seq`` order page by page and publishes them in messages of
``batch`` events. It never has more than ``inflight`` messages without a PUBACK from the broker:
beyond that it waits, so a slow consumer slows its own stream and nothing piles up in memory.
With ``live`` it then sends a ``caught_up`` marker and forwards what the writer commits next
(``CommitSignal``) until cancelled or ``max_duration``. With a ``lease`` the requester must
``renew()`` the stream within that many seconds, again and again, or it ends with reason
``lease_expired``: a requester that vanished without a word (killed, network cut) frees its
stream. It always ends with a ``done`` message (or an error message when the database fails).
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sidecar.api.protocol import ReplayRequest, event_out
from sidecar.core.events import StoredEvent, event_size
from sidecar.errors import StorageError
from sidecar.logs import get_logger
from sidecar.storage.queries import Conditions
from sidecar.storage.reads import Reader

log = get_logger("sidecar.replay")

LIVE_POLL = 1.0  # seconds: a live stream looks again even without a commit signal


class Sent(Protocol):
    """What publishing returns (paho's ``MQTTMessageInfo`` fits)."""

    def is_published(self) -> bool: ...

    def wait_for_publish(self, timeout: float | None = ...) -> None: ...


Send = Callable[[dict[str, Any]], Sent]


class CommitSignal:
    """The writer calls ``notify()`` after each commit that stored events; every live stream
    waits on its own ``threading.Event`` registered here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[threading.Event] = set()

    def subscribe(self, event: threading.Event) -> None:
        with self._lock:
            self._waiters.add(event)

    def unsubscribe(self, event: threading.Event) -> None:
        with self._lock:
            self._waiters.discard(event)

    def notify(self) -> None:
        with self._lock:
            for event in self._waiters:
                event.set()


class Pacer:
    """When the next message may go: ``rate`` (events/s, a token bucket that allows one batch
    at once) and ``original`` pace (the recorded gaps between ``created_at``, / ``speed``)."""

    def __init__(self, *, rate: float | None, original: bool, speed: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._original = original
        self._speed = speed
        self._clock = clock
        self._start = clock()
        self._origin: tuple[float, int] | None = None

    def due_for_event(self, created_at: int) -> float:
        """The clock time an event is due with ``original`` pace (now for instant)."""
        now = self._clock()
        if not self._original:
            return now
        if self._origin is None:
            self._origin = (now, created_at)
            return now
        wall, first = self._origin
        return wall + max(0, created_at - first) / 1000.0 / self._speed

    def due_for_batch(self, sent: int) -> float:
        """The clock time the next batch may go after ``sent`` events (``rate``)."""
        if self._rate is None:
            return self._clock()
        return self._start + sent / self._rate


class _Stopped(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ReplayStream:
    """One replay: ``start()`` runs it in its own thread, ``cancel()`` ends it early."""

    def __init__(self, stream_id: str, request: ReplayRequest, cond: Conditions, *,
                 reader: Reader, send: Send, commits: CommitSignal, inflight: int,
                 max_duration: float, max_bytes: int, fmt: str,
                 on_end: Callable[[ReplayStream], None] | None = None) -> None:
        self.id = stream_id
        self._request = request
        self._cond = cond
        self._reader = reader
        self._send = send
        self._commits = commits
        self._inflight = inflight
        self._deadline = time.monotonic() + max_duration
        self.owner = request.owner
        self.lease = request.lease
        # monotonic time the lease lapses (a float, replaced whole by renew(): no lock needed)
        self._lease_until = math.inf if request.lease is None else time.monotonic() + request.lease
        self._max_bytes = max_bytes
        self._fmt = fmt
        self._on_end = on_end
        self._batch_size = request.batch
        if request.rate is not None:  # about one message a second when throttled
            self._batch_size = max(1, min(request.batch, int(request.rate)))
        self._page_size = min(max(self._batch_size, 100), 1000)
        self._pacer = Pacer(rate=request.rate, original=request.pace == "original",
                            speed=request.speed)
        self._stop = threading.Event()
        self._stop_reason = "cancelled"
        self._wake = threading.Event()
        self._pending: collections.deque[Sent] = collections.deque()
        self._thread = threading.Thread(target=self._run, name=f"kairo-replay-{stream_id[:8]}",
                                        daemon=True)
        self.count = 0  # events sent
        self.messages = 0
        self.last: int | None = request.after  # seq of the last event sent (the resume cursor)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread.start()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()
        self._wake.set()

    def renew(self) -> None:
        """The requester is still there: the lease runs ``lease`` seconds from now."""
        if self.lease is not None:
            self._lease_until = time.monotonic() + self.lease

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the stream thread
    def _run(self) -> None:
        started = time.monotonic()
        self._commits.subscribe(self._wake)
        reason = "complete"
        try:
            try:
                self._stream()
            except _Stopped as stop:
                reason = stop.reason
                if reason == "lease_expired":
                    log.warning("replay_lease_expired", stream=self.id, owner=self.owner,
                                lease=self.lease, events=self.count)
            self._publish({"status": "ok", "stream": self.id, "done": True, "count": self.count,
                           "last": self.last, "reason": reason}, wait=False)
        except StorageError as exc:
            reason = "error"
            log.error("replay_failed", stream=self.id, error=str(exc))
            self._publish({"status": "error", "stream": self.id,
                           "error": {"code": "internal", "message": str(exc)}}, wait=False)
        except (RuntimeError, ValueError) as exc:  # publishing failed: the broker is gone
            reason = "disconnected"
            log.warning("replay_interrupted", stream=self.id, error=str(exc), count=self.count)
        except Exception as exc:  # a bug: say so to the requester rather than go silent
            reason = "error"
            log.exception("replay_crashed", stream=self.id)
            with contextlib.suppress(Exception):
                self._publish({"status": "error", "stream": self.id, "error": {
                    "code": "internal", "message": repr(exc)}}, wait=False)
        finally:
            self._commits.unsubscribe(self._wake)
            self._reader.close()
            log.info("replay_ended", stream=self.id, reason=reason, events=self.count,
                     messages=self.messages, seconds=round(time.monotonic() - started, 3))
            if self._on_end is not None:
                self._on_end(self)

    def _stream(self) -> None:
        # a small time range: its seqs once, then each page walks only those (and new ones)
        self._cond = self._reader.seq_window(self._cond)
        cursor = self._request.after
        batch: list[StoredEvent] = []
        size = 0
        live = False
        while True:
            self._check()
            self._wake.clear()  # a commit after this point wakes the wait below
            # A page holds at most about one message's worth of events (large events).
            rows, cut = self._reader.page_within(self._cond, limit=self._page_size, after=cursor,
                                                 max_bytes=self._max_bytes)
            for row in rows:
                cursor = row.seq
                if not live:
                    due = self._pacer.due_for_event(row.created_at)
                    if due > time.monotonic():
                        self._flush(batch)
                        batch, size = [], 0
                        self._sleep_until(due)
                row_size = event_size(row)
                if batch and size + row_size > self._max_bytes:
                    self._flush(batch)
                    batch, size = [], 0
                batch.append(row)
                size += row_size
                if len(batch) >= self._batch_size:
                    self._flush(batch)
                    batch, size = [], 0
            if cut or len(rows) == self._page_size:
                continue
            self._flush(batch)
            batch, size = [], 0
            if not self._request.live:
                return
            if not live:
                live = True
                self._publish({"status": "ok", "stream": self.id, "caught_up": True,
                               "last": self.last})
            self._wake.wait(min(LIVE_POLL, max(0.0, self._deadline - time.monotonic()),
                                max(0.0, self._lease_until - time.monotonic())))

    def _flush(self, batch: list[StoredEvent]) -> None:
        if not batch:
            return
        self._sleep_until(self._pacer.due_for_batch(self.count))
        self.messages += 1
        self._publish({"status": "ok", "stream": self.id, "seq": self.messages,
                       "events": [event_out(row, self._fmt) for row in batch]})
        self.count += len(batch)
        self.last = batch[-1].seq

    def _publish(self, body: dict[str, Any], *, wait: bool = True) -> None:
        """Send one message; then, while ``inflight`` messages lack a PUBACK, wait."""
        if self._request.transaction is not None:
            body["transaction"] = self._request.transaction
        self._pending.append(self._send(body))
        while self._pending and self._pending[0].is_published():
            self._pending.popleft()
        while wait and len(self._pending) >= self._inflight:
            self._pending[0].wait_for_publish(0.2)
            if self._pending[0].is_published():
                self._pending.popleft()
            else:
                self._check()

    def _check(self) -> None:
        if self._stop.is_set():
            raise _Stopped(self._stop_reason)
        now = time.monotonic()
        if now >= self._deadline:
            raise _Stopped("max_duration")
        if now >= self._lease_until:
            raise _Stopped("lease_expired")

    def _sleep_until(self, due: float) -> None:
        while True:
            self._check()
            delay = min(due, self._deadline, self._lease_until) - time.monotonic()
            if delay <= 0:
                self._check()
                return
            self._stop.wait(delay)
