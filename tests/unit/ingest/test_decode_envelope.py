"""decode_message on Kairo envelopes and bare objects: defaults, metadata lifted into columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from sidecar.core.events import EventRow
from tests.support.decoding import (
    ENVELOPE,
    RECEIVED,
    TOPIC,
    TRACE_ID,
    TRACEPARENT,
    decode,
    encodings,
    ms,
    to_json,
    to_msgpack,
)


# ------------------------------------------------------------------------------- Kairo envelope
@encodings
def test_full_envelope(encode: Callable[[Any], bytes]) -> None:
    """A complete envelope (JSON or MessagePack) maps every field to its column."""
    row = decode(encode(ENVELOPE))
    assert isinstance(row, EventRow)
    assert row.id == "evt-1"
    assert row.topic == TOPIC
    assert row.type == "user.message.sent"
    assert row.source == "svc/chat"
    assert json.loads(row.payload) == ENVELOPE["payload"]
    assert json.loads(row.metadata) == ENVELOPE["metadata"]
    assert row.correlation_id == "corr-1"
    assert row.causation_id == "cause-1"
    assert row.trace_id == "trace-1"
    assert row.created_at == 1_700_000_000_123
    assert row.received_at == RECEIVED


@pytest.mark.parametrize("content_type", ["application/msgpack", "application/x-msgpack",
                                          "application/vnd.msgpack"])
def test_msgpack_by_content_type(content_type: str) -> None:
    """MessagePack is decoded when the MQTT 5 content type says so."""
    row = decode(to_msgpack(ENVELOPE), content_type=content_type)
    assert row.id == "evt-1"
    assert json.loads(row.payload) == ENVELOPE["payload"]


def test_json_payload_text_kept_verbatim() -> None:
    """The JSON envelope's payload is stored as the exact bytes it came with (no re-encode)."""
    row = decode(b'{"id": "a", "payload": {"b": 1,  "a": [1, 2.50]}}')
    assert row.payload == '{"b": 1,  "a": [1, 2.50]}'


def test_json_payload_unicode_kept() -> None:
    """Non-ASCII payload text survives the round trip."""
    row = decode('{"payload": {"t": "héllo ✓ 😀"}}'.encode())
    assert json.loads(row.payload) == {"t": "héllo ✓ 😀"}


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123.9, 1_700_000_000_123),
        (0, 0),
        ("2024-01-02T03:04:05.678Z", ms(datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))),
        ("2024-01-02T03:04:05Z", ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))),
        ("2024-01-02T03:04:05.678+02:00",
         ms(datetime(2024, 1, 2, 1, 4, 5, 678000, tzinfo=UTC))),
        ("2024-01-02T03:04:05.009-05:30",
         ms(datetime(2024, 1, 2, 8, 34, 5, 9000, tzinfo=UTC))),
    ],
)
@encodings
def test_envelope_timestamp(encode: Callable[[Any], bytes], timestamp: Any, expected: int) -> None:
    """metadata.timestamp as epoch ms or RFC 3339 (Z or offset) becomes created_at in ms."""
    row = decode(encode({"payload": 1, "metadata": {"timestamp": timestamp}}))
    assert row.created_at == expected
    assert row.received_at == RECEIVED


@encodings
def test_missing_id_is_none(encode: Callable[[Any], bytes]) -> None:
    """Without an id the row's id is None (the writer assigns one)."""
    assert decode(encode({"type": "t", "payload": 1})).id is None


@pytest.mark.parametrize(
    ("topic", "expected"),
    [("kairo/user/message", "kairo.user.message"), ("kairo/a", "kairo.a"), ("x", "x")],
)
@encodings
def test_missing_type_from_topic(encode: Callable[[Any], bytes], topic: str, expected: str) -> None:
    """Without a type the type is the topic with / replaced by ."""
    assert decode(encode({"payload": 1}), topic=topic).type == expected


@encodings
def test_missing_source_is_topic(encode: Callable[[Any], bytes]) -> None:
    """Without a source the source is the topic."""
    assert decode(encode({"payload": 1}), topic="kairo/orders/created").source == (
        "kairo/orders/created")


@pytest.mark.parametrize("metadata", [None, {}, {"timestamp": None}, {"other": 1}])
@encodings
def test_missing_timestamp_uses_received_at(encode: Callable[[Any], bytes],
                                            metadata: dict[str, Any] | None) -> None:
    """Without metadata.timestamp, created_at equals received_at."""
    obj: dict[str, Any] = {"payload": 1}
    if metadata is not None:
        obj["metadata"] = metadata
    row = decode(encode(obj), received_at=1_234_567)
    assert row.created_at == row.received_at == 1_234_567


@encodings
def test_missing_metadata_is_empty_object(encode: Callable[[Any], bytes]) -> None:
    """An envelope without metadata stores {} and has no correlation/causation/trace ids."""
    row = decode(encode({"id": "x", "payload": 1}))
    assert json.loads(row.metadata) == {}
    assert (row.correlation_id, row.causation_id, row.trace_id) == (None, None, None)


@encodings
def test_empty_object_payload_is_null(encode: Callable[[Any], bytes]) -> None:
    """An empty object is an event with a null payload and all defaults."""
    row = decode(encode({}))
    assert row.payload == "null"
    assert (row.id, row.type, row.source) == (None, "kairo.user.message", TOPIC)


@encodings
def test_extra_top_level_keys_kept_in_metadata(encode: Callable[[Any], bytes]) -> None:
    """Keys beside id/type/source/payload/metadata are kept in metadata with the metadata."""
    obj = {"id": "e", "type": "t", "payload": {"a": 1}, "version": 3, "tags": ["x"],
           "metadata": {"correlationId": "c", "timestamp": "2024-01-02T03:04:05Z"}}
    row = decode(encode(obj))
    assert row.id == "e"
    assert row.type == "t"
    assert json.loads(row.payload) == {"a": 1}
    assert json.loads(row.metadata) == {"version": 3, "tags": ["x"], "correlationId": "c",
                                        "timestamp": "2024-01-02T03:04:05Z"}
    assert row.correlation_id == "c"
    assert row.created_at == ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))


@encodings
def test_bare_object_becomes_payload(encode: Callable[[Any], bytes]) -> None:
    """An object without payload or metadata is stored whole as the payload."""
    obj = {"id": "not-an-envelope-id", "user": "ann", "count": 2}
    row = decode(encode(obj))
    assert json.loads(row.payload) == obj
    assert json.loads(row.metadata) == {}
    assert row.id is None
    assert row.type == "kairo.user.message"
    assert row.created_at == RECEIVED


@encodings
def test_snake_case_metadata_aliases(encode: Callable[[Any], bytes]) -> None:
    """correlation_id, causation_id and trace_id in metadata are lifted like the camelCase ones."""
    row = decode(encode({"metadata": {"correlation_id": "c", "causation_id": "z",
                                      "trace_id": "t"}}))
    assert (row.correlation_id, row.causation_id, row.trace_id) == ("c", "z", "t")


@encodings
def test_traceparent_in_metadata_gives_trace_id(encode: Callable[[Any], bytes]) -> None:
    """Without traceId, a W3C traceparent in metadata gives the trace id column."""
    row = decode(encode({"metadata": {"traceparent": TRACEPARENT}}))
    assert row.trace_id == TRACE_ID


def test_trace_id_wins_over_traceparent() -> None:
    """An explicit traceId is used even when a traceparent is present."""
    row = decode(to_json({"metadata": {"traceId": "mine", "traceparent": TRACEPARENT}}))
    assert row.trace_id == "mine"
