"""Event rows, ids and clocks: the basics every layer shares.

``EventRow``/``DeadLetterRow`` are the columns of a stored event and dead letter;
``StoredEvent`` is an event as reads return it; ``uuid7`` makes time-ordered ids;
``parse_timestamp`` reads epoch ms or RFC 3339.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sidecar.errors import PayloadError

Data = bytes | bytearray

# Timestamps outside these bounds (ms) are rejected: before 1970 or after the year 9999.
MIN_TS_MS = 0
MAX_TS_MS = 253402300799999


class EventRow(NamedTuple):
    """The columns of ``events`` (all but ``seq``), in insert order.

    ``id`` is ``None`` when the message carried none: the writer assigns a UUIDv7 there, so that
    a redelivered copy of the same MQTT message gets the same id (see ``writer``).
    """

    id: str | None
    topic: str
    type: str
    source: str
    payload: str
    metadata: str
    created_at: int
    received_at: int
    correlation_id: str | None
    causation_id: str | None
    trace_id: str | None


class DeadLetterRow(NamedTuple):
    """The columns of ``dead_letters`` (all but ``id``), in insert order. ``content_type`` and
    ``user_properties`` (JSON ``[[name, value], ...]``) are the MQTT 5 properties the decode
    used, kept so that a re-ingest decodes the stored bytes the same way."""

    topic: str
    payload: bytes
    payload_size: int
    reason: str
    received_at: int
    content_type: str | None = None
    user_properties: str | None = None


class StoredEvent(NamedTuple):
    """An event as ``storage.reads`` returns it: the columns an answer shows, in answer order.
    A NamedTuple (not a Struct): built straight from an SQLite row, it costs a tuple."""

    seq: int
    id: str
    topic: str
    type: str
    source: str
    payload: str  # JSON text, as stored
    metadata: str  # JSON text, as stored
    created_at: int
    received_at: int


def event_size(event: StoredEvent) -> int:
    """About how many bytes ``event`` takes in an answer (for ``api.max_response_bytes``)."""
    return 160 + sum(map(len, event[1:7]))  # id, topic, type, source, payload, metadata


EVENT_COLUMNS = EventRow._fields
DEAD_LETTER_COLUMNS = DeadLetterRow._fields


# ---------------------------------------------------------------------------- ids and times
class _UUID7:
    """Time-ordered UUIDv7 (RFC 9562), monotonic within a process (12-bit counter per ms)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._counter += 1
                if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    self._last_ms += 1
                    self._counter = 0
                ms = self._last_ms
            else:
                self._last_ms = ms
                self._counter = 0
            counter = self._counter
        rand = int.from_bytes(os.urandom(8)) & 0x3FFFFFFFFFFFFFFF
        value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
        return str(uuid.UUID(int=value))


uuid7 = _UUID7()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_timestamp(value: Any, field: str) -> int:
    """Epoch milliseconds (int or float) or an RFC 3339 string -> epoch ms."""
    if isinstance(value, bool):
        raise PayloadError(f"{field}: expected epoch ms or an RFC 3339 string, got a boolean")
    if isinstance(value, int | float):
        if value != value or not MIN_TS_MS <= value <= MAX_TS_MS:  # NaN or out of range
            raise PayloadError(f"{field}: epoch ms {value!r} out of range")
        return int(value)
    if isinstance(value, str):
        if not _RFC3339.match(value):
            raise PayloadError(f"{field}: {value[:64]!r} is not an RFC 3339 timestamp")
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise PayloadError(f"{field}: {value[:64]!r} is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ms = int(parsed.timestamp() * 1000)
        if not MIN_TS_MS <= ms <= MAX_TS_MS:
            raise PayloadError(f"{field}: {value[:64]!r} out of range")
        return ms
    raise PayloadError(f"{field}: expected epoch ms or an RFC 3339 string, got {kind_of(value)}")


# RFC 3339 date-time; a missing offset is read as UTC, a space may stand for the "T".
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$")


def kind_of(value: Any) -> str:
    """``an object``, ``a string``, ... for messages about a value's JSON type."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")
