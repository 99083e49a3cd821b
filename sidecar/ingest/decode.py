"""Message -> event: turn one MQTT message into an ``events`` row or a ``dead_letters`` row.

Pure functions, no I/O. Runs on the paho network thread, so it stays cheap: the common case (a
JSON Kairo envelope) is one msgspec decode into a Struct with the payload kept as raw bytes.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec

from sidecar.core import codecs as wire
from sidecar.core.decode_errors import decode_failure, describe, explain_validation
from sidecar.core.events import (
    Data,
    DeadLetterRow,
    EventRow,
    kind_of,
    parse_timestamp,
)
from sidecar.errors import PayloadError

# W3C traceparent: version (not ff) - trace id - parent id - flags.
_TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id_from_traceparent(value: Any) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or ``None`` when it is not one."""
    if isinstance(value, str):
        match = _TRACEPARENT.match(value)
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    return None


def topic_to_type(topic: str) -> str:
    """``kairo/user/message`` -> ``kairo.user.message``."""
    return topic.replace("/", ".")


def _optional_str(metadata: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = metadata.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PayloadError(f"metadata.{key}: expected a string, got {kind_of(value)}")
        if len(value) > 1024:
            raise PayloadError(f"metadata.{key}: longer than 1024 characters")
        return value
    return None


# ---------------------------------------------------------------------------- building rows
def _event_row(
    *, topic: str, received_at: int, id: Any, type: Any, source: Any, payload: str,
    metadata: dict[str, Any],
) -> EventRow:
    """Apply the defaults and lift the indexed metadata out into columns."""
    timestamp = metadata.get("timestamp")
    created_at = received_at if timestamp is None else parse_timestamp(timestamp, "metadata.timestamp")
    trace_id = _optional_str(metadata, "traceId", "trace_id")
    if trace_id is None:
        trace_id = trace_id_from_traceparent(metadata.get("traceparent"))
    try:
        metadata_json = wire.JSON_ENCODER.encode(metadata).decode()
    except (TypeError, msgspec.EncodeError, UnicodeDecodeError) as exc:
        raise PayloadError(f"metadata cannot be stored as JSON: {exc}") from None
    return EventRow(
        id=None if id is wire.UNSET else id,
        topic=topic,
        type=topic_to_type(topic) if type is wire.UNSET else type,
        source=topic if source is wire.UNSET else source,
        payload=payload,
        metadata=metadata_json,
        created_at=created_at,
        received_at=received_at,
        correlation_id=_optional_str(metadata, "correlationId", "correlation_id"),
        causation_id=_optional_str(metadata, "causationId", "causation_id"),
        trace_id=trace_id,
    )


def _json_text(value: Any, what: str) -> str:
    try:
        return wire.JSON_ENCODER.encode(value).decode()
    except (TypeError, msgspec.EncodeError, UnicodeDecodeError, OverflowError) as exc:
        raise PayloadError(f"{what} cannot be stored as JSON: {exc}") from None


def _raw_payload(raw: msgspec.Raw, fmt: str) -> str:
    """The envelope's ``payload`` as JSON text: JSON bytes as they came, MessagePack converted."""
    data = bytes(raw)
    if not data:
        return "null"
    if fmt == "msgpack":
        return _json_text(wire.MSGPACK_ANY.decode(data), "payload")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise PayloadError("payload: invalid UTF-8") from None


def _from_envelope(env: wire.KairoEnvelope, fmt: str, topic: str, received_at: int) -> EventRow:
    return _event_row(
        topic=topic, received_at=received_at, id=env.id, type=env.type, source=env.source,
        payload=_raw_payload(env.payload, fmt),
        metadata={} if env.metadata is wire.UNSET else env.metadata,
    )


def _from_mapping(obj: dict[str, Any], topic: str, received_at: int) -> EventRow:
    """An object the fast path could not take: a CloudEvent, an envelope with extra keys, or a
    bare object (all of it becomes the payload)."""
    if "specversion" in obj:
        return _from_cloudevent(obj, topic, received_at)
    if "payload" not in obj and "metadata" not in obj:
        return _event_row(topic=topic, received_at=received_at, id=wire.UNSET, type=wire.UNSET,
                          source=wire.UNSET, payload=_json_text(obj, "payload"), metadata={})
    env = msgspec.convert(obj, wire.KairoEnvelopeLoose)
    metadata = {k: v for k, v in obj.items() if k not in wire.KAIRO_KEYS}  # extras are kept
    metadata.update(env.metadata)
    return _event_row(topic=topic, received_at=received_at, id=env.id, type=env.type,
                      source=env.source, payload=_json_text(env.payload, "payload"),
                      metadata=metadata)


def _from_cloudevent(obj: dict[str, Any], topic: str, received_at: int) -> EventRow:
    """CloudEvents 1.0 structured mode: extensions and attributes go into metadata."""
    ce = msgspec.convert(obj, wire.CloudEvent)
    metadata = {k: v for k, v in obj.items() if k not in wire.CLOUDEVENT_COLUMNS}
    if ce.data_base64 is not wire.UNSET:
        payload = _json_text(ce.data_base64, "data_base64")
        metadata["dataencoding"] = "base64"
    else:
        payload = "null" if ce.data is wire.UNSET else _json_text(ce.data, "data")
    return _event_row(topic=topic, received_at=received_at, id=ce.id, type=ce.type,
                      source=ce.source, payload=payload, metadata=_normalise_ce(metadata))


def _normalise_ce(metadata: dict[str, Any]) -> dict[str, Any]:
    """Add the Kairo names (timestamp, correlationId, ...) beside the CloudEvents ones."""
    if "time" in metadata and "timestamp" not in metadata:
        metadata["timestamp"] = metadata["time"]
    for ce_key, kairo_key in (("correlationid", "correlationId"), ("causationid", "causationId")):
        if ce_key in metadata and kairo_key not in metadata:
            metadata[kairo_key] = metadata[ce_key]
    if "traceId" not in metadata:
        trace_id = trace_id_from_traceparent(metadata.get("traceparent"))
        if trace_id:
            metadata["traceId"] = trace_id
    return metadata


def _decode_data(decoder: Any, data: Data, fmt: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError:
        raise PayloadError(f"data: {decode_failure(data, fmt)}") from None


def _binary_data(data: Data, content_type: str | None) -> tuple[str, str | None]:
    """The data of a binary-mode CloudEvent as JSON text, and its encoding if not plain.

    A JSON or MessagePack content type must match the bytes (else PayloadError); text is stored
    as a JSON string; without a content type, JSON is tried and anything else is kept as base64.
    """
    if not data:
        return "null", None
    media = wire.media_type(content_type)
    fmt = wire.format_of(content_type, data)
    if fmt == "json" and media is not None:
        return _json_text(_decode_data(wire.JSON_ANY, data, "json"), "data"), None
    if fmt == "msgpack":
        return _json_text(_decode_data(wire.MSGPACK_ANY, data, "msgpack"), "data"), None
    if media is not None and media.startswith("text/"):
        try:
            return _json_text(data.decode(), "data"), None
        except UnicodeDecodeError:
            raise PayloadError("data: text content type but invalid UTF-8") from None
    if media is None:
        try:
            return _json_text(wire.JSON_ANY.decode(data), "data"), None
        except (msgspec.DecodeError, UnicodeDecodeError, PayloadError):
            pass
    return _json_text(base64.b64encode(data).decode(), "data"), "base64"


def _from_binary_cloudevent(
    data: Data, props: dict[str, str], content_type: str | None, topic: str, received_at: int
) -> EventRow:
    """CloudEvents binary mode: attributes in MQTT 5 user properties, data in the payload."""
    metadata: dict[str, Any] = {k: v for k, v in props.items() if k not in wire.CLOUDEVENT_COLUMNS}
    if content_type:
        metadata["datacontenttype"] = content_type
    payload, encoding = _binary_data(data, content_type)
    if encoding:
        metadata["dataencoding"] = encoding
    ce = msgspec.convert({k: v for k, v in props.items() if k in ("specversion", "id", "type",
                                                               "source")}, wire.CloudEvent)
    return _event_row(topic=topic, received_at=received_at, id=ce.id, type=ce.type,
                      source=ce.source, payload=payload, metadata=_normalise_ce(metadata))


# ---------------------------------------------------------------------------- entry point
def decode_message(
    topic: str,
    data: Data,
    *,
    received_at: int,
    max_payload_bytes: int,
    content_type: str | None = None,
    user_properties: list[tuple[str, str]] | None = None,
) -> EventRow:
    """Turn one message into an event row, or raise ``PayloadError`` with the reason."""
    if len(data) > max_payload_bytes:
        raise PayloadError(f"payload too large: {len(data)} bytes > max_payload_bytes "
                           f"{max_payload_bytes}")
    fmt: str | None = None
    try:
        if user_properties:
            props = dict(user_properties)
            if "specversion" in props:
                return _from_binary_cloudevent(data, props, content_type, topic, received_at)
        fmt = wire.format_of(content_type, data)
        if fmt is None:
            media = wire.media_type(content_type)
            raise PayloadError(f"unsupported content type {media!r}" if media else
                               "not a JSON object or a MessagePack map")
        fast = wire.JSON_ENVELOPE if fmt == "json" else wire.MSGPACK_ENVELOPE
        try:
            return _from_envelope(fast.decode(data), fmt, topic, received_at)
        except msgspec.ValidationError as exc:
            if explain_validation(str(exc))[0] != "unknown":
                raise
        obj = (wire.JSON_ANY if fmt == "json" else wire.MSGPACK_ANY).decode(data)
        return _from_mapping(obj, topic, received_at)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"invalid event: {describe(exc, data, fmt or 'json')}") from None
    except msgspec.DecodeError:
        raise PayloadError(decode_failure(data, fmt or "json")) from None
    except UnicodeDecodeError:
        raise PayloadError("invalid UTF-8 in a string") from None
    except RecursionError:
        raise PayloadError("payload nested too deeply") from None


def dead_letter(topic: str, data: Data, reason: str, *, received_at: int, max_bytes: int,
                content_type: str | None = None,
                user_properties: list[tuple[str, str]] | None = None) -> DeadLetterRow:
    return DeadLetterRow(topic=topic, payload=bytes(data[:max_bytes]), payload_size=len(data),
                         reason=reason[:1000], received_at=received_at,
                         content_type=content_type or None,
                         user_properties=_properties_json(user_properties))


def _properties_json(pairs: list[tuple[str, str]] | None) -> str | None:
    if not pairs:
        return None
    try:
        return wire.JSON_ENCODER.encode([[str(k), str(v)] for k, v in pairs]).decode()
    except (TypeError, msgspec.EncodeError, UnicodeDecodeError):
        return None  # not storable text: the dead letter keeps its bytes and reason anyway


def properties_from_json(text: str | None) -> list[tuple[str, str]] | None:
    """``user_properties`` as stored in ``dead_letters`` -> the pairs ``decode_message`` takes."""
    if not text:
        return None
    pairs = wire.JSON_ANY.decode(text.encode())
    return [(str(k), str(v)) for k, v in pairs]
