"""decode_message on malformed input, MessagePack oddities and seeded random mutations: a
PayloadError with our reason, never a crash or a row."""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.core.events import MAX_TS_MS, EventRow
from sidecar.errors import PayloadError
from tests.support.decoding import (
    BINARY_PROPS,
    CLOUDEVENT,
    ENVELOPE,
    MAX,
    RECEIVED,
    TOPIC,
    TRACEPARENT,
    decode,
    encodings,
    reject,
    to_json,
    to_msgpack,
)


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
