"""sidecar.core.events: timestamps (epoch ms, RFC 3339), traceparent, topic -> type, uuid7."""

from __future__ import annotations

import time
import types
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from sidecar.core import events
from sidecar.core.events import MAX_TS_MS, parse_timestamp, uuid7
from sidecar.errors import PayloadError
from sidecar.ingest.decode import topic_to_type, trace_id_from_traceparent
from tests.support.decoding import (
    TRACE_ID,
    TRACEPARENT,
    ms,
)


# ------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (MAX_TS_MS, MAX_TS_MS),
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123.999, 1_700_000_000_123),
        ("1970-01-01T00:00:00Z", 0),
        ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
        ("2024-01-02T03:04:05.678Z", ms(datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))),
        ("2024-01-02T03:04:05.678+02:00",
         ms(datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2))))),
        ("2024-01-02 03:04:05Z", ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))),
        ("2024-01-02t03:04:05Z", ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))),
        ("2024-01-02T03:04:05", ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))),  # naive = UTC
        ("2024-01-02T03:04:05.123456Z", ms(datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC))),
    ],
)
def test_parse_timestamp(value: Any, expected: int) -> None:
    """parse_timestamp turns epoch ms and RFC 3339 strings into exact epoch ms."""
    assert parse_timestamp(value, "t") == expected


def test_parse_timestamp_every_millisecond_exact() -> None:
    """RFC 3339 milliseconds .000 to .999 convert without float rounding errors."""
    base = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    for n in range(1000):
        dt = base + timedelta(milliseconds=n)
        text = dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert parse_timestamp(text, "t") == ms(dt), text


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (True, "boolean"), (None, "null"), ([], "array"), ({}, "object"),
        (float("nan"), "out of range"), (float("inf"), "out of range"),
        (-1, "out of range"), (MAX_TS_MS + 1, "out of range"),
        ("nope", "not an RFC 3339"), ("1969-12-31T23:59:59.999Z", "out of range"),
    ],
)
def test_parse_timestamp_rejects(value: Any, needle: str) -> None:
    """parse_timestamp raises a PayloadError naming the field and the problem."""
    with pytest.raises(PayloadError) as info:
        parse_timestamp(value, "some.field")
    assert info.value.reason.startswith("some.field: ")
    assert needle in info.value.reason


@pytest.mark.parametrize("value", ["2024-W01-1", "20240102T030405Z", "2024-01-02T03"])
def test_parse_timestamp_rejects_non_rfc3339_iso_forms(value: str) -> None:
    """ISO 8601 forms that are not RFC 3339 (week dates, basic format, hour only) are rejected."""
    with pytest.raises(PayloadError):
        parse_timestamp(value, "t")


@pytest.mark.parametrize("value", ["2024-01-02T03:04:05z", "2024-01-02t03:04:05z"])
def test_parse_timestamp_accepts_lower_case_z(value: str) -> None:
    """RFC 3339 timestamps with a lower-case z offset are accepted."""
    assert parse_timestamp(value, "t") == ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.mark.parametrize(
    ("topic", "expected"),
    [("kairo/user/message", "kairo.user.message"), ("kairo", "kairo"), ("a//b/", "a..b."),
     ("kairo/é", "kairo.é")],
)
def test_topic_to_type(topic: str, expected: str) -> None:
    """topic_to_type replaces every / by ."""
    assert topic_to_type(topic) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, TRACE_ID),
        ("01-" + TRACE_ID + "-b7ad6b7169203331-00", TRACE_ID),
        ("00-" + "0" * 32 + "-b7ad6b7169203331-01", None),
        (TRACEPARENT.upper(), None),
        ("00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01", None),
        ("00-" + TRACE_ID + "-b7ad6b716920333-01", None),
        (TRACE_ID, None),
        ("", None),
        (None, None),
        (42, None),
        (TRACEPARENT.encode(), None),
    ],
)
def test_trace_id_from_traceparent(value: Any, expected: str | None) -> None:
    """trace_id_from_traceparent returns the 32-hex trace id of a valid traceparent, else None."""
    assert trace_id_from_traceparent(value) == expected


# ------------------------------------------------------------------------------------------ uuid7
def test_uuid7_version_and_variant() -> None:
    """uuid7() returns a canonical UUID string of version 7 and the RFC 4122 variant."""
    for _ in range(100):
        text = uuid7()
        value = uuid.UUID(text)
        assert str(value) == text
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_strictly_increasing() -> None:
    """1000 consecutive uuid7() strings are strictly increasing and distinct."""
    ids = [uuid7() for _ in range(1000)]
    assert ids == sorted(set(ids))  # strictly increasing
    assert len(set(ids)) == 1000


def test_uuid7_timestamp_is_now() -> None:
    """The 48-bit prefix of a fresh uuid7 is the current epoch millisecond."""
    gen = events._UUID7()
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(gen())
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_frozen_clock_counter_and_borrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a frozen clock ids still increase; after 4096 ids the next millisecond is borrowed."""
    frozen = 1_700_000_000_000
    monkeypatch.setattr(events, "time", types.SimpleNamespace(time_ns=lambda: frozen * 10**6))
    gen = events._UUID7()
    ids = [gen() for _ in range(5000)]
    assert ids == sorted(set(ids))  # strictly increasing
    prefixes = [uuid.UUID(i).int >> 80 for i in ids]
    assert prefixes[:4096] == [frozen] * 4096
    assert prefixes[4096:] == [frozen + 1] * (5000 - 4096)
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_uuid7_clock_going_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the clock steps back, ids keep increasing (they stay on the last millisecond)."""
    clock = iter([2_000, 2_000, 1_000, 1_500, 2_500])
    monkeypatch.setattr(events, "time",
                        types.SimpleNamespace(time_ns=lambda: next(clock) * 10**6))
    gen = events._UUID7()
    ids = [gen() for _ in range(5)]
    assert ids == sorted(set(ids))  # strictly increasing
    assert [uuid.UUID(i).int >> 80 for i in ids] == [2_000, 2_000, 2_000, 2_000, 2_500]
