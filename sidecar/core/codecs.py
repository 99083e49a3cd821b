"""Wire types and codecs (msgspec), built once at import and reused on the hot path."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

from sidecar.core.decode_errors import explain_validation

Text = Annotated[str, Meta(min_length=1, max_length=1024)]
Id = Annotated[str, Meta(min_length=1, max_length=256)]


class KairoEnvelope(msgspec.Struct, forbid_unknown_fields=True):
    """``{id, type, source, payload, metadata}``; ``payload`` kept as raw bytes (no re-encode)."""

    id: Id | UnsetType = UNSET
    type: Text | UnsetType = UNSET
    source: Text | UnsetType = UNSET
    payload: Raw = Raw()
    metadata: dict[str, Any] | UnsetType = UNSET


class KairoEnvelopeLoose(msgspec.Struct):
    """The same envelope read from an already decoded mapping that has extra keys."""

    id: Id | UnsetType = UNSET
    type: Text | UnsetType = UNSET
    source: Text | UnsetType = UNSET
    payload: Any = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class CloudEvent(msgspec.Struct):
    """The CloudEvents 1.0 context attributes we read; extensions stay in the mapping."""

    specversion: Text
    id: Id | UnsetType = UNSET
    source: Text | UnsetType = UNSET
    type: Text | UnsetType = UNSET
    time: str | UnsetType = UNSET
    data: Any = UNSET
    data_base64: str | UnsetType = UNSET
    datacontenttype: str | UnsetType = UNSET


# Attributes of a CloudEvent that are columns, not metadata.
CLOUDEVENT_COLUMNS = frozenset({"id", "source", "type", "data", "data_base64"})
KAIRO_KEYS = frozenset({"id", "type", "source", "payload", "metadata"})

JSON_ENVELOPE = msgspec.json.Decoder(KairoEnvelope)
MSGPACK_ENVELOPE = msgspec.msgpack.Decoder(KairoEnvelope)
JSON_ANY = msgspec.json.Decoder()
MSGPACK_ANY = msgspec.msgpack.Decoder()
JSON_ENCODER = msgspec.json.Encoder()
MSGPACK_ENCODER = msgspec.msgpack.Encoder()

JSON_CONTENT_TYPES = frozenset({
    "application/json", "application/cloudevents+json", "text/json",
    "application/cloudevents-batch+json",
})
MSGPACK_CONTENT_TYPES = frozenset({
    "application/msgpack", "application/x-msgpack", "application/vnd.msgpack",
    "application/cloudevents+msgpack",
})


def media_type(content_type: str | None) -> str | None:
    """``"application/json; charset=utf-8"`` -> ``"application/json"``."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def sniff_format(data: bytes | bytearray) -> str | None:
    """``"json"`` for a JSON object, ``"msgpack"`` for a MessagePack map, else ``None``."""
    first = data.lstrip(b" \t\r\n")[:1]
    if first == b"{":
        return "json"
    if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return "msgpack"
    return None


def format_of(content_type: str | None, data: bytes | bytearray) -> str | None:
    """The encoding of ``data``: from the MQTT 5 content type when given, else sniffed."""
    media = media_type(content_type)
    if media in JSON_CONTENT_TYPES or (media and media.endswith("+json")):
        return "json"
    if media in MSGPACK_CONTENT_TYPES:
        return "msgpack"
    return sniff_format(data)


__all__ = [
    "CLOUDEVENT_COLUMNS", "JSON_ANY", "JSON_ENCODER", "JSON_ENVELOPE", "KAIRO_KEYS",
    "MSGPACK_ANY", "MSGPACK_ENCODER", "MSGPACK_ENVELOPE", "UNSET", "CloudEvent",
    "KairoEnvelope", "KairoEnvelopeLoose", "Raw", "UnsetType", "explain_validation", "format_of",
    "media_type",
    "sniff_format",
]
