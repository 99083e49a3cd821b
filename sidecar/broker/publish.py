"""A lean parser for the PUBLISH packets the sidecar receives (MQTT 3.1.1 and 5).

paho turns every PUBLISH into an ``MQTTMessage`` with a full MQTT 5 ``Properties`` object (a
class that validates every attribute it sets), formats a debug log line and walks its topic
matcher: the profile of a drain put ~40 % of the daemon's CPU there (BENCHMARKS.md).
``parse_publish`` reads one PUBLISH straight from the receive buffer into a ``Publish`` tuple:
topic, packet id, QoS/dup/retain, the payload, and of the MQTT 5 properties only those the
sidecar reads (content type, user properties, response topic, correlation data); payload format
indicator, message expiry and subscription identifiers are skipped.

It takes only what it is sure of and returns ``None`` for anything else, which
``paho_client.Client`` then hands to paho's own path unchanged: a packet that is not a PUBLISH,
QoS 2 (paho keeps it until PUBREL), a packet not wholly in the buffer, an empty topic or a
Topic Alias (the sidecar never allows aliases: it sends no Topic Alias Maximum), a topic or
string that is not valid UTF-8 or holds what MQTT forbids in one (U+0000, U+FEFF), a property
not allowed in a PUBLISH or given twice, lengths that do not add up. paho then either takes
the packet as it always did or refuses it as malformed, exactly as without this module.
"""

from __future__ import annotations

from typing import NamedTuple

_PUBLISH = 0x30
# MQTT 5 property identifiers allowed in a PUBLISH (MQTT 5.0, 3.3.2.3).
_PAYLOAD_FORMAT = 0x01  # byte: skipped
_MESSAGE_EXPIRY = 0x02  # four-byte integer: skipped
_CONTENT_TYPE = 0x03
_RESPONSE_TOPIC = 0x08
_CORRELATION_DATA = 0x09
_SUBSCRIPTION_ID = 0x0B  # variable byte integer, may repeat: skipped
_USER_PROPERTY = 0x26  # may repeat


class Publish(NamedTuple):
    """One received PUBLISH, as the sidecar's subscriber reads it (no paho types)."""

    topic: str
    payload: bytes | bytearray  # bytes from the lean path; paho gives bytes too
    qos: int
    retain: bool
    dup: bool
    mid: int  # packet id (0 for QoS 0)
    content_type: str | None = None
    user_properties: list[tuple[str, str]] | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


_Properties = tuple[str | None, list[tuple[str, str]] | None, str | None, bytes | None]
_NO_PROPERTIES: _Properties = (None, None, None, None)


def parse_publish(buf: bytes, pos: int, v5: bool) -> tuple[Publish, int] | None:
    """The QoS 0 or 1 PUBLISH starting at ``buf[pos]`` and the position after it, or ``None``
    when the packet there is anything else (paho's own path takes it then)."""
    end = len(buf)
    header = buf[pos]
    if header & 0xF0 != _PUBLISH:
        return None
    qos = (header >> 1) & 3
    if qos > 1:
        return None
    # Remaining length: a variable byte integer of at most 4 bytes.
    i = pos + 1
    length = 0
    shift = 0
    while True:
        if i >= end or shift > 21:
            return None
        byte = buf[i]
        i += 1
        length |= (byte & 127) << shift
        if not byte & 128:
            break
        shift += 7
    stop = i + length
    if stop > end or i + 2 > stop:
        return None
    topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
    if topic_end > stop or topic_end == i + 2:
        return None
    try:
        topic = buf[i + 2:topic_end].decode()
    except UnicodeDecodeError:
        return None
    i = topic_end
    mid = 0
    if qos:
        if i + 2 > stop:
            return None
        mid = buf[i] << 8 | buf[i + 1]
        i += 2
    props = _NO_PROPERTIES
    if v5:
        if i >= stop:
            return None
        props_length = buf[i]
        i += 1
        if props_length & 128:  # more than 127 bytes of properties: rare, not worth a fast path
            return None
        if props_length:
            props_end = i + props_length
            if props_end > stop:
                return None
            parsed = _properties(buf, i, props_end)
            if parsed is None:
                return None
            props = parsed
            i = props_end
    return Publish(topic, buf[i:stop], qos, bool(header & 1), bool(header & 8), mid,
                   *props), stop


def _properties(buf: bytes, i: int, stop: int) -> _Properties | None:
    content_type: str | None = None
    user: list[tuple[str, str]] | None = None
    response_topic: str | None = None
    correlation: bytes | None = None
    skipped_once = 0  # bit 0: payload format indicator seen, bit 1: message expiry seen
    while i < stop:
        ident = buf[i]
        i += 1
        if ident == _USER_PROPERTY:
            key = _string(buf, i, stop)
            if key is None:
                return None
            name, i = key
            value = _string(buf, i, stop)
            if value is None:
                return None
            text, i = value
            if user is None:
                user = []
            user.append((name, text))
        elif ident == _CONTENT_TYPE:
            string = _string(buf, i, stop) if content_type is None else None
            if string is None:
                return None
            content_type, i = string
        elif ident == _RESPONSE_TOPIC:
            string = _string(buf, i, stop) if response_topic is None else None
            if string is None:
                return None
            response_topic, i = string
        elif ident == _CORRELATION_DATA:
            if correlation is not None or i + 2 > stop:
                return None
            data_end = i + 2 + (buf[i] << 8 | buf[i + 1])
            if data_end > stop:
                return None
            correlation = buf[i + 2:data_end]
            i = data_end
        elif ident == _PAYLOAD_FORMAT:  # paho refuses a value other than 0 or 1
            if skipped_once & 1 or i >= stop or buf[i] > 1:
                return None
            skipped_once |= 1
            i += 1
        elif ident == _MESSAGE_EXPIRY:
            if skipped_once & 2:
                return None
            skipped_once |= 2
            i += 4
        elif ident == _SUBSCRIPTION_ID:  # 1 to 268,435,455: paho refuses 0
            nonzero = 0
            for _ in range(4):
                if i >= stop:
                    return None
                byte = buf[i]
                i += 1
                nonzero |= byte & 127
                if not byte & 128:
                    break
            else:
                return None
            if not nonzero:
                return None
        else:  # a Topic Alias, or a property a PUBLISH may not carry
            return None
    if i != stop:
        return None
    return content_type, user, response_topic, correlation


def _string(buf: bytes, i: int, stop: int) -> tuple[str, int] | None:
    """An MQTT UTF-8 string at ``buf[i]`` and the position after it; ``None`` where paho's
    ``readUTF`` would refuse it (or where it would read past the properties)."""
    if i + 2 > stop:
        return None
    string_end = i + 2 + (buf[i] << 8 | buf[i + 1])
    if string_end > stop:
        return None
    try:
        text = buf[i + 2:string_end].decode()
    except UnicodeDecodeError:
        return None
    if "\x00" in text or "\ufeff" in text:
        return None
    return text, string_end
