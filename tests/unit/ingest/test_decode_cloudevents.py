"""decode_message on CloudEvents (structured and binary mode) and the content type against sniffing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.decoding import (
    BINARY_PROPS,
    CLOUDEVENT,
    RECEIVED,
    TOPIC,
    TRACE_ID,
    decode,
    encodings,
    ms,
    reject,
    to_json,
    to_msgpack,
)


# ------------------------------------------------------------------------------- CloudEvents
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
