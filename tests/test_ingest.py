"""Unit tests of sidecar.ingest: MQTT message -> events row / dead_letters row. Pure, no I/O."""

from __future__ import annotations

import base64
import json
import random
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from sidecar.core import events
from sidecar.core.events import MAX_TS_MS, DeadLetterRow, EventRow, parse_timestamp, uuid7
from sidecar.errors import PayloadError
from sidecar.ingest.decode import dead_letter, decode_message, topic_to_type, trace_id_from_traceparent

TOPIC = "kairo/user/message"
RECEIVED = 1_700_000_000_000
MAX = 262_144
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(dt: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (integer arithmetic, no floats)."""
    return (dt - EPOCH) // timedelta(milliseconds=1)


def decode(data: bytes, topic: str = TOPIC, **kwargs: Any) -> EventRow:
    kwargs.setdefault("received_at", RECEIVED)
    kwargs.setdefault("max_payload_bytes", MAX)
    return decode_message(topic, data, **kwargs)


def reject(data: bytes, **kwargs: Any) -> str:
    """Decode ``data``, expect a PayloadError, return its reason."""
    with pytest.raises(PayloadError) as info:
        decode(data, **kwargs)
    assert info.value.reason
    assert str(info.value) == info.value.reason
    return info.value.reason


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def to_msgpack(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


ENCODINGS: dict[str, Callable[[Any], bytes]] = {"json": to_json, "msgpack": to_msgpack}
encodings = pytest.mark.parametrize("encode", list(ENCODINGS.values()), ids=list(ENCODINGS))

ENVELOPE: dict[str, Any] = {
    "id": "evt-1",
    "type": "user.message.sent",
    "source": "svc/chat",
    "payload": {"text": "hi", "n": [1, 2, {"deep": None}], "ok": True},
    "metadata": {
        "correlationId": "corr-1",
        "causationId": "cause-1",
        "traceId": "trace-1",
        "timestamp": 1_700_000_000_123,
        "unknownKey": {"nested": [1, "x"]},
    },
}


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


# ------------------------------------------------------------------------------- CloudEvents
CLOUDEVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "ce-1",
    "source": "/svc/orders",
    "type": "com.example.order.created",
    "time": "2024-01-02T03:04:05.678Z",
    "subject": "order/42",
    "datacontenttype": "application/json",
    "correlationid": "corr-ce",
    "causationid": "cause-ce",
    "traceparent": TRACEPARENT,
    "myextension": "kept",
    "data": {"order": 42, "items": [1, 2]},
}


@encodings
def test_cloudevent_structured(encode: Callable[[Any], bytes]) -> None:
    """A structured CloudEvent maps id/source/type/data to columns, the rest to metadata."""
    row = decode(encode(CLOUDEVENT))
    assert row.id == "ce-1"
    assert row.source == "/svc/orders"
    assert row.type == "com.example.order.created"
    assert json.loads(row.payload) == {"order": 42, "items": [1, 2]}
    assert row.created_at == ms(datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    assert row.correlation_id == "corr-ce"
    assert row.causation_id == "cause-ce"
    assert row.trace_id == TRACE_ID
    metadata = json.loads(row.metadata)
    for key in ("specversion", "time", "subject", "datacontenttype", "correlationid",
                "causationid", "traceparent", "myextension"):
        assert metadata[key] == CLOUDEVENT[key], key
    assert not {"id", "source", "type", "data"} & set(metadata)


def test_cloudevent_structured_json_content_type() -> None:
    """application/cloudevents+json is read as JSON."""
    row = decode(to_json(CLOUDEVENT), content_type="application/cloudevents+json")
    assert row.id == "ce-1"


def test_cloudevent_data_base64() -> None:
    """data_base64 is stored as the base64 string with metadata.dataencoding = base64."""
    ce = {k: v for k, v in CLOUDEVENT.items() if k != "data"}
    ce["data_base64"] = base64.b64encode(b"\x00\x01binary").decode()
    row = decode(to_json(ce))
    assert base64.b64decode(json.loads(row.payload)) == b"\x00\x01binary"
    metadata = json.loads(row.metadata)
    assert metadata["dataencoding"] == "base64"
    assert "data_base64" not in metadata


def test_cloudevent_minimal() -> None:
    """A CloudEvent with only specversion gets the topic defaults and a null payload."""
    row = decode(to_json({"specversion": "1.0"}))
    assert (row.id, row.type, row.source, row.payload) == (None, "kairo.user.message", TOPIC,
                                                           "null")
    assert row.created_at == RECEIVED
    assert json.loads(row.metadata) == {"specversion": "1.0"}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"specversion": 1}, "specversion"),
        ({"id": 5}, "id"),
        ({"id": ""}, "id"),
        ({"type": ["x"]}, "type"),
        ({"time": 5}, "time"),
        ({"time": "not a time"}, "timestamp"),
        ({"data_base64": 5}, "data_base64"),
        ({"correlationid": 5}, "correlation"),
    ],
)
def test_cloudevent_bad_attributes(change: dict[str, Any], needle: str) -> None:
    """A CloudEvent attribute of the wrong type is a PayloadError naming it."""
    assert needle in reject(to_json({**CLOUDEVENT, **change}))


BINARY_PROPS = [("specversion", "1.0"), ("id", "bin-1"), ("type", "com.example.bin"),
                ("source", "/svc/bin"), ("correlationid", "corr-b"), ("causationid", "cause-b"),
                ("traceparent", TRACEPARENT), ("subject", "s")]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_cloudevent_binary_json(content_type: str) -> None:
    """Binary mode: attributes from user properties, JSON data from the payload."""
    row = decode(b'{"k": [1, 2]}', content_type=content_type, user_properties=BINARY_PROPS)
    assert row.id == "bin-1"
    assert row.type == "com.example.bin"
    assert row.source == "/svc/bin"
    assert json.loads(row.payload) == {"k": [1, 2]}
    assert row.correlation_id == "corr-b"
    assert row.causation_id == "cause-b"
    assert row.trace_id == TRACE_ID
    assert row.created_at == RECEIVED
    metadata = json.loads(row.metadata)
    assert metadata["specversion"] == "1.0"
    assert metadata["subject"] == "s"
    assert metadata["datacontenttype"] == content_type
    assert not {"id", "type", "source"} & set(metadata)
    assert "dataencoding" not in metadata


@pytest.mark.parametrize("content_type", ["text/plain", "Text/Plain; charset=utf-8"])
def test_cloudevent_binary_text_is_not_sniffed(content_type: str) -> None:
    """Binary mode with a text content type stores JSON-looking text as a string."""
    row = decode(b"42", content_type=content_type, user_properties=BINARY_PROPS)
    assert json.loads(row.payload) == "42"


def test_cloudevent_binary_text_plain() -> None:
    """Binary mode with text/plain stores the text as a JSON string."""
    row = decode("héllo wörld".encode(), content_type="text/plain",
                 user_properties=BINARY_PROPS)
    assert json.loads(row.payload) == "héllo wörld"
    assert "dataencoding" not in json.loads(row.metadata)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", None])
def test_cloudevent_binary_unknown_data_is_base64(content_type: str | None) -> None:
    """Binary mode with undecodable data stores base64 and metadata.dataencoding = base64."""
    data = b"\x00\x01\xff\xfe binary"
    row = decode(data, content_type=content_type, user_properties=BINARY_PROPS)
    assert base64.b64decode(json.loads(row.payload)) == data
    metadata = json.loads(row.metadata)
    assert metadata["dataencoding"] == "base64"
    assert metadata.get("datacontenttype") == content_type


def test_cloudevent_binary_msgpack() -> None:
    """Binary mode with application/msgpack converts the data to JSON."""
    row = decode(to_msgpack({"k": [1, "x"]}), content_type="application/msgpack",
                 user_properties=BINARY_PROPS)
    assert json.loads(row.payload) == {"k": [1, "x"]}


@pytest.mark.parametrize(("data", "payload"), [(b"[1, 2]", [1, 2]), (b"42", 42),
                                               (b'"s"', "s"), (b"null", None), (b"", None)])
def test_cloudevent_binary_sniffed_json_values(data: bytes, payload: Any) -> None:
    """Binary mode without a content type sniffs any JSON value (and empty data is null)."""
    row = decode(data, user_properties=BINARY_PROPS)
    assert json.loads(row.payload) == payload


def test_cloudevent_binary_time_property() -> None:
    """A time user property becomes created_at."""
    props = [*BINARY_PROPS, ("time", "2024-01-02T03:04:05Z")]
    row = decode(b"{}", content_type="application/json", user_properties=props)
    assert row.created_at == ms(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))


def test_cloudevent_binary_text_invalid_utf8() -> None:
    """Binary mode with a text content type and invalid UTF-8 is a PayloadError."""
    assert "UTF-8" in reject(b"\xff\xfe", content_type="text/plain",
                             user_properties=BINARY_PROPS)


@pytest.mark.parametrize("data", [b'{"k": ', b"[1,", b"nope"])
def test_cloudevent_binary_malformed_json(data: bytes) -> None:
    """Binary mode with malformed JSON data is a PayloadError."""
    reject(data, content_type="application/json", user_properties=BINARY_PROPS)


@pytest.mark.parametrize("data", [b"[1,", b"nope", b"\x00\x01binary"])
def test_cloudevent_binary_without_content_type_keeps_non_json_as_base64(data: bytes) -> None:
    """Binary mode without a content type: data that is not JSON is kept as base64, not lost."""
    row = decode(data, user_properties=BINARY_PROPS)
    assert base64.b64decode(json.loads(row.payload)) == data
    assert json.loads(row.metadata)["dataencoding"] == "base64"


@pytest.mark.parametrize("data", [b"[1,", b"nope"])
def test_cloudevent_binary_malformed_json_says_json(data: bytes) -> None:
    """Malformed data under a JSON content type is reported as malformed JSON."""
    reason = reject(data, content_type="application/json", user_properties=BINARY_PROPS)
    assert "MessagePack" not in reason
    assert "JSON" in reason


def test_user_properties_without_specversion_are_ignored() -> None:
    """User properties without specversion do not make a binary CloudEvent."""
    row = decode(to_json({"id": "env", "payload": 1}), user_properties=[("id", "prop")])
    assert row.id == "env"
    assert json.loads(row.metadata) == {}


# ----------------------------------------------------------------------- content type vs sniffing
@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'  \n\t{"id": "a", "payload": 1}', None),
        (b'\r\n{"id": "a", "payload": 1}', "application/json"),
        (b'{"id": "a", "payload": 1}', "application/json; charset=utf-8"),
        (b'{"id": "a", "payload": 1}', "APPLICATION/JSON"),
        (b'{"id": "a", "payload": 1}', "text/json"),
        (b'{"id": "a", "payload": 1}', "application/vnd.kairo+json"),
        (b'{"id": "a", "payload": 1}', ""),
        (to_msgpack({"id": "a", "payload": 1}), None),
        (to_msgpack({"id": "a", "payload": 1}), "application/msgpack"),
    ],
)
def test_content_type_given_or_sniffed(data: bytes, content_type: str | None) -> None:
    """JSON and MessagePack are recognised from the content type or by sniffing the bytes."""
    row = decode(data, content_type=content_type)
    assert row.id == "a"
    assert json.loads(row.payload) == 1


@pytest.mark.parametrize(
    ("data", "content_type", "needle"),
    [
        (to_msgpack({"id": "a"}), "application/json", "malformed JSON"),
        (b'{"id": "a"}', "application/msgpack", "invalid event"),
        (b"GIF89a...", "image/gif", "unsupported content type 'image/gif'"),
        (b'{"id": "a"}', "Application/MsgPack; x=y", "invalid event"),
        (to_msgpack({"id": "a"}), "APPLICATION/JSON; charset=utf-8", "malformed JSON"),
    ],
)
def test_content_type_mismatch(data: bytes, content_type: str, needle: str) -> None:
    """Bytes that do not match the declared content type are a PayloadError."""
    assert needle in reject(data, content_type=content_type)


# ------------------------------------------------------------------------------------ malformed
def _deep_random_bytes() -> list[bytes]:
    rng = random.Random(99)
    return [rng.randbytes(rng.randrange(16, 200)) for _ in range(50)]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\x00\x01\x02garbage\xff\xfe", "not a JSON object or a MessagePack map"),
        (bytes(range(256)), "not a JSON object or a MessagePack map"),
        (b"", "not a JSON object or a MessagePack map"),
        (b"   ", "not a JSON object or a MessagePack map"),
        (b'{"id": "a", "payload": {"x"', "malformed JSON"),
        (b'{"id": "a"', "malformed JSON"),
        (b"{", "malformed JSON"),
        (b'{"payload": 1} trailing', "malformed JSON"),
        (to_msgpack(ENVELOPE)[:-5], "malformed MessagePack"),
        (to_msgpack(ENVELOPE)[:3], "malformed MessagePack"),
        (b"[1, 2]", "not a JSON object"),
        (b'"a string"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"true", "not a JSON object"),
        (to_msgpack([1, 2]), "not a JSON object"),
        (to_msgpack("str"), "not a JSON object"),
    ],
)
def test_malformed_bytes(data: bytes, needle: str) -> None:
    """Garbage, truncated JSON/MessagePack and non-object top levels are PayloadErrors."""
    assert needle in reject(data)


@pytest.mark.parametrize("data", _deep_random_bytes())
def test_random_bytes_never_stored(data: bytes) -> None:
    """Seeded random byte strings never make a row (a PayloadError, or the known UTF-8 bug)."""
    with pytest.raises((PayloadError, UnicodeDecodeError)):
        decode(data)


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"id": 5}, "$.id"),
        ({"id": ""}, "$.id"),
        ({"id": None}, "$.id"),
        ({"type": 5}, "$.type"),
        ({"type": ""}, "$.type"),
        ({"source": ["a"]}, "$.source"),
        ({"metadata": []}, "$.metadata"),
        ({"metadata": "x"}, "$.metadata"),
        ({"payload": 1, "extra": 1, "id": 5}, "$.id"),
        ({"payload": 1, "extra": 1, "metadata": []}, "$.metadata"),
        ({"metadata": {"correlationId": 5}}, "metadata.correlationId"),
        ({"metadata": {"causationId": {"a": 1}}}, "metadata.causationId"),
        ({"metadata": {"traceId": ["t"]}}, "metadata.traceId"),
        ({"metadata": {"correlationId": "c" * 1025}}, "metadata.correlationId"),
        ({"metadata": {"traceId": "t" * 1025}}, "metadata.traceId"),
    ],
)
@encodings
def test_wrong_field_types(encode: Callable[[Any], bytes], obj: dict[str, Any],
                           needle: str) -> None:
    """A field of the wrong type or length is a PayloadError naming the field."""
    assert f"{needle.removeprefix('$.')}: " in reject(encode(obj))


@pytest.mark.parametrize("field", ["type", "source"])
def test_text_fields_limited_to_1024(field: str) -> None:
    """type and source up to 1024 characters are accepted, longer ones rejected."""
    assert getattr(decode(to_json({field: "x" * 1024})), field) == "x" * 1024
    assert reject(to_json({field: "x" * 1025})) == (
        f"invalid event: {field}: must have at most 1024 characters")


@encodings
def test_id_limited_to_256(encode: Callable[[Any], bytes]) -> None:
    """An id of 256 characters is accepted, one of 257 is a PayloadError."""
    assert decode(encode({"id": "i" * 256})).id == "i" * 256
    assert reject(encode({"id": "i" * 257})) == "invalid event: id: must have at most 256 characters"


@pytest.mark.parametrize(
    "data",
    [b'{"payload": "\xff"}', b'{"payload": {"a": "caf\xe9"}}', b'{"payload": [1, "\xc3"]}'],
)
def test_invalid_utf8_in_payload(data: bytes) -> None:
    """Invalid UTF-8 inside the JSON payload is a PayloadError saying so."""
    assert "UTF-8" in reject(data)


INVALID_UTF8_STRINGS = [
    pytest.param(b'{"id": "\xff"}', None, id="json-id"),
    pytest.param(b'{"type": "caf\xe9"}', None, id="json-type"),
    pytest.param(b'{"metadata": {"x": "\xff"}}', None, id="json-metadata-value"),
    pytest.param(b'{"metadata": {"\xff": 1}}', None, id="json-metadata-key"),
    pytest.param(b'{"a": "\xff"}', None, id="json-bare-object"),
    pytest.param(b'{"payload": 1, "ex\xaatra": 1}', None, id="json-extra-key"),
    pytest.param(b"\x81\xa2id\xa1\xff", None, id="msgpack-id"),
    pytest.param(b"\x81\xa7payload\xa1\xff", None, id="msgpack-payload"),
    pytest.param(b"\x81\xa1\xff\x01", None, id="msgpack-key"),
    pytest.param(b'{"a": "\xff"}', "application/json", id="binary-ce-json-data"),
]


@pytest.mark.parametrize(("data", "content_type"), INVALID_UTF8_STRINGS)
def test_invalid_utf8_in_string(data: bytes, content_type: str | None) -> None:
    """Invalid UTF-8 in a decoded string (id, key, value) is a PayloadError."""
    props = BINARY_PROPS if content_type else None
    reject(data, content_type=content_type, user_properties=props)


@pytest.mark.parametrize(("data", "content_type"), INVALID_UTF8_STRINGS)
def test_invalid_utf8_in_string_never_stored(data: bytes, content_type: str | None) -> None:
    """Invalid UTF-8 in a decoded string never produces a row (whatever it raises today)."""
    props = BINARY_PROPS if content_type else None
    with pytest.raises((PayloadError, UnicodeDecodeError)):
        decode(data, content_type=content_type, user_properties=props)


@pytest.mark.parametrize(
    "timestamp",
    ["nope", "yesterday", "", "2024-13-01T00:00:00Z", "2024-01-02T25:00:00Z",
     "1700000000123", True, False, [], {"ms": 1}],
)
@encodings
def test_bad_timestamp(encode: Callable[[Any], bytes], timestamp: Any) -> None:
    """A timestamp that is neither epoch ms nor RFC 3339 is a PayloadError naming the field."""
    assert "metadata.timestamp" in reject(encode({"metadata": {"timestamp": timestamp}}))


@pytest.mark.parametrize(
    "timestamp",
    [1e30, -1, -1.5, MAX_TS_MS + 1, 2**63, "1969-12-31T23:59:59Z",
     "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999-01:00"],
)
@encodings
def test_out_of_range_timestamp(encode: Callable[[Any], bytes], timestamp: Any) -> None:
    """Timestamps before 1970 or after year 9999 are PayloadErrors saying out of range."""
    assert "out of range" in reject(encode({"metadata": {"timestamp": timestamp}}))


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"100000000000000000000000000000"])
def test_out_of_range_json_number_timestamp(literal: bytes) -> None:
    """Huge JSON number literals as timestamps are PayloadErrors, not crashes."""
    assert "out of range" in reject(b'{"metadata": {"timestamp": ' + literal + b"}}")


def test_oversize_payload() -> None:
    """A message larger than max_payload_bytes is a PayloadError naming both sizes."""
    data = to_json({"payload": "x" * 2000})
    reason = reject(data, max_payload_bytes=len(data) - 1)
    assert "too large" in reason
    assert str(len(data)) in reason
    assert str(len(data) - 1) in reason


def test_payload_of_exactly_max_size_is_accepted() -> None:
    """A message of exactly max_payload_bytes is accepted."""
    prefix, suffix = b'{"payload": "', b'"}'
    data = prefix + b"x" * (MAX - len(prefix) - len(suffix)) + suffix
    assert len(data) == MAX
    assert len(json.loads(decode(data).payload)) == MAX - len(prefix) - len(suffix)


def test_oversize_checked_before_decoding() -> None:
    """The size limit applies before decoding: even garbage gets the too-large reason."""
    assert "too large" in reject(b"\xff" * 11, max_payload_bytes=10)


DEPTH = 100_000


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[" * DEPTH, id="json-open-brackets"),
        pytest.param(b'{"payload":' + b"[" * DEPTH, id="json-payload-open"),
        pytest.param(b'{"payload":' + b"[" * DEPTH + b"]" * DEPTH + b"}", id="json-payload"),
        pytest.param(b'{"a":' + b"[" * DEPTH + b"]" * DEPTH + b"}", id="json-bare"),
        pytest.param(b'{"metadata":{"a":' + b"[" * DEPTH + b"]" * DEPTH + b"}}",
                     id="json-metadata"),
        pytest.param(b'{"a":' * (DEPTH // 6) + b"1" + b"}" * (DEPTH // 6), id="json-objects"),
        pytest.param(b'{"specversion":"1.0","data":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
                     id="cloudevent-data"),
        pytest.param(b"\x81\xa7payload" + b"\x91" * DEPTH + b"\x01", id="msgpack-payload"),
        pytest.param(b"\x81\xa1a" + b"\x91" * DEPTH + b"\x01", id="msgpack-bare"),
    ],
)
def test_deeply_nested_under_size_limit(data: bytes) -> None:
    """Deeply nested JSON/MessagePack within the size limit is a PayloadError, not a crash."""
    assert len(data) <= MAX
    reject(data)


def test_deeply_nested_binary_cloudevent() -> None:
    """Deeply nested binary CloudEvent data is a PayloadError, not a crash."""
    reject(b"[" * DEPTH + b"]" * DEPTH, user_properties=BINARY_PROPS)


@pytest.mark.parametrize(
    ("make", "get"),
    [
        (lambda s: to_json({"payload": s}), lambda row: json.loads(row.payload)),
        (lambda s: to_json({"big": s}), lambda row: json.loads(row.payload)["big"]),
        (lambda s: to_msgpack({"payload": s}), lambda row: json.loads(row.payload)),
        (lambda s: to_json({"payload": 1, "metadata": {"note": s}}),
         lambda row: json.loads(row.metadata)["note"]),
        (lambda s: to_json({"specversion": "1.0", "data": s}), lambda row: json.loads(row.payload)),
    ],
    ids=["json-payload", "json-bare", "msgpack-payload", "json-metadata", "cloudevent"],
)
def test_huge_string_within_limit(make: Callable[[str], bytes],
                                  get: Callable[[EventRow], Any]) -> None:
    """A string close to max_payload_bytes is decoded and stored intact."""
    text = "ab\u00e9" * 60_000
    data = make(text)
    assert len(data) <= MAX
    assert get(decode(data)) == text


# ----------------------------------------------------------------- MessagePack oddities
MSGPACK_KEYS = {
    "int": b"\x01",
    "float": b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00",
    "nil": b"\xc0",
    "bool": b"\xc3",
    "bin": b"\xc4\x01a",
    "array": b"\x91\x01",
    "map": b"\x81\x01\x02",
    "timestamp-ext": b"\xd6\xff\x00\x00\x00\x01",
    "ext": b"\xc7\x01\x05a",
}
MSGPACK_VALUES = {
    "ext": b"\xc7\x01\x05a",
    "fixext": b"\xd4\x07\x01",
    "timestamp-ext": b"\xd6\xff\x00\x00\x00\x01",
    "bin": b"\xc4\x02ab",
    "uint64": b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    "nan": b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
}
MSGPACK_WRAPPERS = {
    "payload": lambda k, v: b"\x81\xa7payload\x81" + k + v,
    "metadata": lambda k, v: b"\x81\xa8metadata\x81" + k + v,
    "extra+metadata": lambda k, v: b"\x82\xa1z\x01\xa8metadata\x81" + k + v,
    "top-level": lambda k, v: b"\x81" + k + v,
}


def _row_or_payload_error(data: bytes, **kwargs: Any) -> EventRow | None:
    """Decode; return the row, or None on PayloadError. Any other exception propagates."""
    try:
        row = decode(data, **kwargs)
    except PayloadError:
        return None
    assert isinstance(row, EventRow)
    return row


@pytest.mark.parametrize("where", list(MSGPACK_WRAPPERS))
@pytest.mark.parametrize("key", list(MSGPACK_KEYS))
def test_msgpack_non_string_keys(where: str, key: str) -> None:
    """Non-string map keys give a row or a PayloadError, never another exception."""
    row = _row_or_payload_error(MSGPACK_WRAPPERS[where](MSGPACK_KEYS[key], b"\x01"))
    if row is not None:
        assert where == "payload"
        assert isinstance(json.loads(row.payload), dict)
        assert json.loads(row.metadata) == {}


@pytest.mark.parametrize("where", ["top-level", "metadata", "extra+metadata"])
@pytest.mark.parametrize("key", ["int", "nil", "bool", "array"])
def test_msgpack_non_string_keys_outside_payload_rejected(where: str, key: str) -> None:
    """Non-string keys at the top level or in metadata are a PayloadError."""
    reject(MSGPACK_WRAPPERS[where](MSGPACK_KEYS[key], b"\x01"))


def test_msgpack_int_key_in_payload_becomes_string() -> None:
    """An int map key inside the payload is stored as a JSON string key."""
    row = decode(b"\x81\xa7payload\x81\x01\x02")
    assert json.loads(row.payload) == {"1": 2}


@pytest.mark.parametrize("value", list(MSGPACK_VALUES))
@pytest.mark.parametrize("where", ["payload", "metadata", "top-level", "value"])
def test_msgpack_ext_and_odd_values(where: str, value: str) -> None:
    """Ext types, bin, uint64 and NaN in a MessagePack message give a row or a PayloadError."""
    raw = MSGPACK_VALUES[value]
    data = b"\x81\xa7payload" + raw if where == "value" else MSGPACK_WRAPPERS[where](b"\xa1k", raw)
    row = _row_or_payload_error(data)
    if row is not None:
        json.loads(row.payload)
        json.loads(row.metadata)


@pytest.mark.parametrize("where", ["payload", "metadata", "top-level"])
def test_msgpack_unknown_ext_rejected(where: str) -> None:
    """An application ext type (not JSON-representable) is a PayloadError naming JSON."""
    reason = reject(MSGPACK_WRAPPERS[where](b"\xa1k", MSGPACK_VALUES["ext"]))
    assert "cannot be stored as JSON" in reason


def test_msgpack_bin_payload_is_base64() -> None:
    """A MessagePack bin value in the payload is stored as a base64 JSON string."""
    row = decode(b"\x81\xa7payload\xc4\x02ab")
    assert base64.b64decode(json.loads(row.payload)) == b"ab"


# --------------------------------------------------------------------- seeded random mutations
SEED_MESSAGES: list[bytes] = [
    to_json(ENVELOPE),
    to_msgpack(ENVELOPE),
    to_json(CLOUDEVENT),
    to_msgpack(CLOUDEVENT),
    to_json({"payload": {"a": 1}, "extra": "x", "metadata": {"traceparent": TRACEPARENT}}),
    to_json({"user": "ann", "items": [1, 2.5, None, True, "s"]}),
    to_json({"id": "e", "metadata": {"timestamp": "2024-01-02T03:04:05.678+02:00"}}),
    to_msgpack({"id": "m", "payload": [1, b"bin", {"k": -1}], "metadata": {"timestamp": 5}}),
    to_json({"specversion": "1.0", "id": "b", "data_base64": "aGVsbG8="}),
    b'  {"type": "t.x", "source": "s", "payload": "caf\xc3\xa9"}',
]
MUTATIONS = 2000


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    op = rng.randrange(3)
    if op == 0 and buf:  # byte flip
        pos = rng.randrange(len(buf))
        buf[pos] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
    elif op == 1:  # truncation
        del buf[rng.randrange(len(buf) + 1):]
    else:  # insertion
        pos = rng.randrange(len(buf) + 1)
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(buf)


def _fuzz() -> tuple[Counter[str], list[tuple[bytes, BaseException]]]:
    """Run the seeded mutations; count outcomes; check every row; collect other exceptions."""
    rng = random.Random(1234)
    outcomes: Counter[str] = Counter()
    unexpected: list[tuple[bytes, BaseException]] = []
    for _ in range(MUTATIONS):
        data = _mutate(rng, rng.choice(SEED_MESSAGES))
        try:
            row = decode(data)
        except PayloadError as exc:
            assert exc.reason
            outcomes["PayloadError"] += 1
            continue
        except Exception as exc:
            unexpected.append((data, exc))
            outcomes[type(exc).__name__] += 1
            continue
        assert isinstance(row, EventRow)
        assert isinstance(json.loads(row.metadata), dict)
        json.loads(row.payload)
        assert 0 <= row.created_at <= MAX_TS_MS
        assert row.topic == TOPIC and row.received_at == RECEIVED
        outcomes["row"] += 1
    return outcomes, unexpected


def test_seed_messages_are_valid() -> None:
    """Every seed message of the mutation test decodes to a row before mutation."""
    for data in SEED_MESSAGES:
        assert isinstance(decode(data), EventRow)


def test_random_mutations_give_row_or_payload_error() -> None:
    """2000 seeded mutations of valid messages give an EventRow or a PayloadError, nothing
    else, and both outcomes occur."""
    outcomes, unexpected = _fuzz()
    assert outcomes["row"] > 0 and outcomes["PayloadError"] > 0
    assert not unexpected, f"{outcomes}; first: {unexpected[0]!r}"


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


# ------------------------------------------------------------------------------------ dead_letter
@pytest.mark.parametrize(("size", "max_bytes"), [(10, 100), (100, 100), (101, 100), (5000, 16),
                                                 (10, 0), (0, 10)])
def test_dead_letter_caps_bytes(size: int, max_bytes: int) -> None:
    """dead_letter keeps at most max_bytes of the message and records the original size."""
    data = bytes(i % 251 for i in range(size))
    row = dead_letter("kairo/x", data, "bad", received_at=RECEIVED, max_bytes=max_bytes)
    assert isinstance(row, DeadLetterRow)
    assert row.payload == data[:max_bytes]
    assert len(row.payload) == min(size, max_bytes)
    assert row.payload_size == size
    assert (row.topic, row.reason, row.received_at) == ("kairo/x", "bad", RECEIVED)


def test_dead_letter_copies_memoryview() -> None:
    """dead_letter stores bytes even when given a memoryview."""
    view = memoryview(b"abcdef")
    row = dead_letter("t", view, "r", received_at=1, max_bytes=3)  # type: ignore[arg-type]
    assert type(row.payload) is bytes
    assert row.payload == b"abc"
    assert row.payload_size == 6


def test_dead_letter_truncates_reason() -> None:
    """dead_letter keeps at most 1000 characters of the reason."""
    row = dead_letter("t", b"x", "r" * 5000, received_at=1, max_bytes=10)
    assert row.reason == "r" * 1000


def test_dead_letter_of_rejected_message() -> None:
    """A PayloadError reason and the raw bytes make a dead-letter row."""
    data = b'{"id": 5}'
    with pytest.raises(PayloadError) as info:
        decode(data)
    row = dead_letter(TOPIC, data, info.value.reason, received_at=RECEIVED, max_bytes=4)
    assert row == DeadLetterRow(TOPIC, b'{"id', len(data), info.value.reason, RECEIVED)


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
