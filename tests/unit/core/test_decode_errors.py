"""Our words for decoder refusals (sidecar.decode_errors), and the msgspec wordings they read.

The first group pins each msgspec message shape that ``explain_validation`` reads for its
structure: a msgspec release that rewords one fails here, loudly, instead of quietly turning a
precise message into ``invalid value``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from sidecar.core.decode_errors import decode_failure, explain_validation, msgpack_problem


class _Limits(msgspec.Struct, forbid_unknown_fields=True):
    n: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    s: Annotated[str, msgspec.Meta(min_length=2, max_length=3, pattern="^[a-z]+$")] = "ab"
    e: Literal["A", "B"] = "A"
    m: Annotated[int, msgspec.Meta(multiple_of=5)] = 5


class _Outer(msgspec.Struct):
    inner: _Limits
    need: int


def _explain(data: object) -> tuple[str, str, str]:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(data, _Outer)
    return explain_validation(str(info.value))


@pytest.mark.parametrize(("data", "expected"), [
    ({"inner": {"n": "x"}, "need": 1}, ("invalid", "inner.n", "expected an integer, got a string")),
    ({"inner": {"n": 0}, "need": 1}, ("invalid", "inner.n", "must be at least 1")),
    ({"inner": {"n": 11}, "need": 1}, ("invalid", "inner.n", "must be at most 10")),
    ({"inner": {"s": "a"}, "need": 1}, ("invalid", "inner.s", "must have at least 2 characters")),
    ({"inner": {"s": "abcd"}, "need": 1}, ("invalid", "inner.s", "must have at most 3 characters")),
    ({"inner": {"s": "A1"}, "need": 1}, ("invalid", "inner.s", "is not in the expected form")),
    ({"inner": {"e": "C"}, "need": 1}, ("invalid", "inner.e", "is not one of the allowed values")),
    ({"inner": {"m": 7}, "need": 1}, ("invalid", "inner.m", "must be a multiple of 5")),
    ({"inner": {"zz": 1}, "need": 1}, ("unknown", "inner.zz", "unknown field")),
    ({"inner": {}}, ("missing", "need", "required")),
    ({"inner": [], "need": 1}, ("invalid", "inner", "expected an object, got a list")),
    ({"inner": {"n": None}, "need": 1}, ("invalid", "inner.n", "expected an integer, got null")),
], ids=["type", "ge", "le", "min-length", "max-length", "pattern", "enum", "multiple", "unknown",
        "missing", "object", "null"])
def test_each_msgspec_wording_is_read_into_our_words(data: object, expected: tuple[str, str, str]):
    """Every validation wording we read (msgspec pinned in constraints.txt) maps to our text."""
    assert _explain(data) == expected


def test_a_number_out_of_range_is_read():
    """A JSON number no type holds is ``number out of range``; dict-key paths are dropped."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(b'{"m": {"t": 1e400}}', type=dict[str, dict[str, int]])
    assert explain_validation(str(info.value)) == ("invalid", "", "number out of range")


def test_an_unknown_wording_becomes_a_generic_message_not_msgspecs():
    """A message we cannot read is never passed through: ``invalid value``, the path kept."""
    assert explain_validation("Something new happened - at `$.a.b`") == ("invalid", "a.b",
                                                                         "invalid value")


@pytest.mark.parametrize(("data", "reason"), [
    (b'{"a": "\xff"}', "invalid UTF-8 in a string"),
    (b'{"type": "kairo.\xc3"}', "invalid UTF-8 in a string"),
    (b'{"a":', "malformed JSON at character 6"),
    (b'{"a": 1} x', "malformed JSON at character 10"),
    (b"\x81\xa2id\xa1a", "malformed JSON at character 1"),
    (b'{"a": "\x01"}', "malformed JSON at character 8"),
])
def test_json_decode_failures_are_said_in_our_words(data: bytes, reason: str):
    """Invalid UTF-8 inside a string and JSON syntax errors (with the position) are told apart."""
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(data)
    assert decode_failure(data, "json") == reason


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x81\xa4type\xa2\xff\xfe", "invalid UTF-8 in a string"),
    (b"\x81\xa1a", "malformed MessagePack: data ends early (at byte 3)"),
    (b"\x81\xa1a\xc1", "malformed MessagePack: byte 0xc1 at byte 3 starts no value"),
    (b"\x81\xa1a\x01\x02", "malformed MessagePack: extra bytes after the value (at byte 4)"),
    (b"\xdf\xff\xff\xff\xff", "malformed MessagePack: data ends early (at byte 5)"),
])
def test_msgpack_decode_failures_are_said_in_our_words(data: bytes, reason: str):
    """The MessagePack walk names invalid UTF-8, truncation, bad type bytes and trailing bytes."""
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(data)
    assert decode_failure(data, "msgpack") == reason


def test_the_msgpack_walk_accepts_every_kind_of_value():
    """Valid MessagePack of every type walks through (no false alarm beyond trailing bytes)."""
    value = {"s": "x" * 40, "b": b"\x00" * 300, "i": [0, -1, 200, -200, 70000, 2**40, -(2**40)],
             "f": 1.5, "n": None, "t": True, "m": {"k" * 300: list(range(20))},
             "e": msgspec.msgpack.Ext(1, b"abcd")}
    data = msgspec.msgpack.encode(value)
    assert msgpack_problem(data) == "malformed MessagePack"
    assert msgpack_problem(data + b"\x00") == (
        f"malformed MessagePack: extra bytes after the value (at byte {len(data)})")
