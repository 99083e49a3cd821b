"""sidecar.core.codecs: the wire types and decoders built once, format detection by content type
and by the first byte, and the msgspec behaviour the ingest fast path depends on."""

from __future__ import annotations

import msgspec
import pytest

from sidecar.core import codecs
from sidecar.core.decode_errors import explain_validation


@pytest.mark.parametrize(("content_type", "data", "expected"), [
    ("application/json", b"\x81", "json"),  # the content type wins over the bytes
    ("application/cloudevents+json", b"{}", "json"),
    ("application/vnd.custom+json; charset=utf-8", b"{}", "json"),
    ("APPLICATION/JSON", b"{}", "json"),
    ("application/msgpack", b"{}", "msgpack"),
    ("application/cloudevents+msgpack", b"\x80", "msgpack"),
    ("text/plain", b"{}", "json"),  # a content type we do not know: the bytes decide
    ("text/plain", b"x", None),
    (None, b'  \n{"a": 1}', "json"),
    (None, b"\x80", "msgpack"), (None, b"\x8f", "msgpack"), (None, b"\xde\x00\x00", "msgpack"),
    (None, b"\xdf\x00\x00\x00\x00", "msgpack"),
    (None, b"[1]", None), (None, b"\x90", None), (None, b"", None), (None, b"   ", None),
])
def test_format_of(content_type: str | None, data: bytes, expected: str | None):
    """The MQTT 5 content type decides when given; otherwise an object's first byte does."""
    assert codecs.format_of(content_type, data) == expected


def test_media_type_strips_parameters_and_case():
    """``Application/JSON; charset=utf-8`` -> ``application/json``; empty -> None."""
    assert codecs.media_type("Application/JSON; charset=utf-8") == "application/json"
    assert codecs.media_type("") is None and codecs.media_type(None) is None
    assert codecs.media_type(" ; x=y") is None


@pytest.mark.parametrize("decoder", [codecs.JSON_ENVELOPE, codecs.MSGPACK_ENVELOPE], ids=["json", "msgpack"])
def test_envelope_keeps_the_payload_raw(decoder):
    """The fast path decodes the envelope into a Struct and keeps ``payload`` as the raw bytes."""
    body = {"id": "e1", "type": "t", "source": "s", "payload": {"b": [1, 2.50, "x"], "a": None},
            "metadata": {"k": 1}}
    data = (msgspec.json.encode(body) if decoder is codecs.JSON_ENVELOPE else msgspec.msgpack.encode(body))
    env = decoder.decode(data)
    assert (env.id, env.type, env.source, env.metadata) == ("e1", "t", "s", {"k": 1})
    assert isinstance(env.payload, msgspec.Raw) and bytes(env.payload) in data


def test_envelope_refuses_unknown_top_level_keys_with_a_readable_error():
    """An unknown top-level key makes the fast path fall back (ingest reads the kind, not text)."""
    with pytest.raises(msgspec.ValidationError) as info:
        codecs.JSON_ENVELOPE.decode(b'{"id": "e1", "extra": 1}')
    assert explain_validation(str(info.value)) == ("unknown", "extra", "unknown field")


@pytest.mark.parametrize(("field", "value"), [("id", ""), ("id", "i" * 257), ("type", "t" * 1025),
                                              ("source", "")])
def test_envelope_limits(field: str, value: str):
    """id is 1-256 characters, type and source 1-1024: longer or empty is a validation error."""
    with pytest.raises(msgspec.ValidationError) as info:
        codecs.JSON_ENVELOPE.decode(msgspec.json.encode({field: value}))
    assert explain_validation(str(info.value))[1] == field


def test_cloud_event_requires_specversion():
    """A CloudEvent without ``specversion`` does not decode as one."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"id": "x"}, codecs.CloudEvent)
    assert explain_validation(str(info.value)) == ("missing", "specversion", "required")
