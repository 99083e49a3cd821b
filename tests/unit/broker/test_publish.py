"""``sidecar.broker.publish.parse_publish`` against paho's own PUBLISH decoding: every packet
the lean parser takes, paho reads to the same values; every packet it leaves alone goes to paho."""

from __future__ import annotations

import random
import struct
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from sidecar.broker.publish import Publish, parse_publish
from sidecar.broker.subscriber import _as_publish

V5 = MQTTProtocolVersion.MQTTv5
V311 = MQTTProtocolVersion.MQTTv311


def encode(topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 7, dup: bool = False,
           retain: bool = False, props: Properties | None = None, v5: bool = True,
           raw_props: bytes | None = None) -> bytes:
    """A PUBLISH packet; properties packed by paho's own ``Properties.pack``."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        if raw_props is not None:
            body += bytes(VariableByteIntegers.encode(len(raw_props))) + raw_props
        else:
            body += bytes((props or Properties(PacketTypes.PUBLISH)).pack())
    body += payload
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([header]) + bytes(VariableByteIntegers.encode(len(body))) + body


def paho_reads(packet: bytes, v5: bool = True) -> Publish | Exception:
    """What paho's ``_handle_publish`` makes of the packet, as the subscriber sees it."""
    length, used = VariableByteIntegers.decode(packet[1:])
    body = bytearray(packet[1 + used:1 + used + length])
    try:
        result = _packet.decode_publish(packet[0], body, V5 if v5 else V311)
    except Exception as exc:  # any refusal counts
        return exc
    message = paho.MQTTMessage(mid=result.mid, topic=result.topic)
    message.dup, message.qos, message.retain = result.dup, result.qos, result.retain
    message.properties, message.payload = result.properties, result.payload
    try:
        return _as_publish(message)
    except Exception as exc:
        return exc


def lean_reads(packet: bytes, v5: bool = True) -> Publish | None:
    parsed = parse_publish(packet, 0, v5)
    if parsed is None:
        return None
    message, end = parsed
    assert end == len(packet), "the parser must stop exactly at the packet's end"
    return message


def props(**values: Any) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(p, name, value)
    return p


EVERY_KIND = props(
    PayloadFormatIndicator=1, MessageExpiryInterval=3600, ContentType="application/json",
    ResponseTopic="kairo/api/reply/7", CorrelationData=b"\x00\x01corr",
    SubscriptionIdentifier=300,  # two bytes as a variable byte integer
    UserProperty=[("specversion", "1.0"), ("type", "dü.e"), ("type", "again")],
)


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("dup", [False, True])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("payload", [b"", b'{"id": "e1", "payload": 1}', bytes(range(256)) * 40],
                         ids=["empty", "json", "10k-binary"])
def test_lean_parse_equals_paho_for_flags_and_payloads(v5: bool, qos: int, dup: bool,
                                                        retain: bool, payload: bytes):
    """QoS 0/1, dup, retain, empty and large payloads, both protocols: the same values as paho."""
    packet = encode("kairo/sensors/t€mp".encode(), payload, qos=qos, mid=65535 if qos else 0,
                    dup=dup, retain=retain, v5=v5)
    lean = lean_reads(packet, v5)
    assert lean is not None
    assert lean == paho_reads(packet, v5)
    assert (lean.qos, lean.dup, lean.retain, lean.payload) == (qos, dup, retain, payload)


@pytest.mark.parametrize("properties", [
    EVERY_KIND,
    props(ContentType="application/msgpack"),
    props(UserProperty=[("k", "")]),
    props(ResponseTopic="r", CorrelationData=b""),
    props(SubscriptionIdentifier=[1, 268435455]),
    props(PayloadFormatIndicator=0, MessageExpiryInterval=0),
], ids=["every-kind", "content-type", "empty-user-value", "response-empty-correlation",
        "two-subscription-ids", "skipped-only"])
def test_lean_parse_equals_paho_for_every_property_kind(properties: Properties):
    """Each MQTT 5 property a PUBLISH may carry (but Topic Alias): the sidecar's four read the
    same as paho's, the others skipped without shifting the payload."""
    packet = encode(b"kairo/a", b"body", props=properties)
    lean = lean_reads(packet)
    assert lean is not None, "left to paho although every property is one the parser takes"
    assert lean == paho_reads(packet)
    assert lean.payload == b"body"


def test_every_kind_is_read_into_the_fields_the_sidecar_uses():
    """content type, user properties (in order, repeated keys kept), response topic and
    correlation data come out as str / list of pairs / str / bytes."""
    lean = lean_reads(encode(b"kairo/a", b"x", props=EVERY_KIND))
    assert lean is not None
    assert lean.content_type == "application/json"
    assert lean.user_properties == [("specversion", "1.0"), ("type", "dü.e"), ("type", "again")]
    assert lean.response_topic == "kairo/api/reply/7"
    assert lean.correlation_data == b"\x00\x01corr"


@pytest.mark.parametrize("packet", [
    encode(b"kairo/a", b"x", qos=2),
    encode(b"kairo/a", b"x", props=props(TopicAlias=3)),
    encode(b"", b"x", raw_props=b"\x23\x00\x03"),  # empty topic + alias
    encode(b"kairo/\xff", b"x"),  # topic not UTF-8
    encode(b"kairo/a", b"x", props=props(UserProperty=[("k", "v" * 200)])),  # > 127 B of props
    encode(b"kairo/a", b"x", raw_props=b"\x03\x00\x02a\x00"),  # U+0000 in a string
    encode(b"kairo/a", b"x", raw_props=b"\x03\x00\x03\xef\xbb\xbf"),  # U+FEFF
    encode(b"kairo/a", b"x", raw_props=b"\x03\x00\x01a\x03\x00\x01b"),  # content type twice
    encode(b"kairo/a", b"x", raw_props=b"\x01\x02"),  # payload format indicator 2
    encode(b"kairo/a", b"x", raw_props=b"\x0b\x00"),  # subscription identifier 0
    encode(b"kairo/a", b"x", raw_props=b"\x11\x00\x00\x00\x05"),  # a CONNECT-only property
    encode(b"kairo/a", b"x", raw_props=b"\x03\x00\x09ab"),  # string past the properties
    bytes([0x40, 0x02, 0x00, 0x01]),  # a PUBACK
    bytes([0x32, 0x7F, 0x00, 0x03]) + b"abc",  # incomplete: the rest not yet received
], ids=["qos2", "topic-alias", "empty-topic-alias", "topic-not-utf8", "long-properties",
        "nul-in-string", "bom-in-string", "content-type-twice", "payload-format-2",
        "subscription-id-0", "connect-property", "string-overrun", "puback", "incomplete"])
def test_unusual_packets_are_left_to_paho(packet: bytes):
    """QoS 2, topic aliases, bad UTF-8, long or invalid properties, other packet types and
    partial packets: the lean parser declines (paho's path reads or refuses them as ever)."""
    assert parse_publish(packet, 0, True) is None


def test_back_to_back_packets_parse_from_their_offsets():
    """Packets one after another in a buffer: each parse returns the next packet's offset."""
    packets = [encode(b"kairo/%d" % n, b"p%d" % n, mid=n + 1) for n in range(5)]
    buf = b"".join(packets)
    pos, seen = 0, []
    while pos < len(buf):
        parsed = parse_publish(buf, pos, True)
        assert parsed is not None
        message, pos = parsed
        seen.append((message.topic, message.payload, message.mid))
    assert seen == [(f"kairo/{n}", b"p%d" % n, n + 1) for n in range(5)]
    assert parse_publish(buf[:-1], len(buf) - len(packets[-1]), True) is None  # cut short


def test_random_mutations_never_read_differently_from_paho():
    """Fuzz: flip, cut and insert bytes in valid packets; whenever the lean parser takes one,
    paho reads exactly the same message from it (a refusal by paho means the parser declined)."""
    rng = random.Random(11)
    seeds = [encode(b"kairo/a/b", b'{"id": 1}', props=EVERY_KIND),
             encode(b"kairo/x", b"", qos=0, props=props(ContentType="text/plain")),
             encode(b"t", b"abc", props=props(UserProperty=[("a", "b")], CorrelationData=b"z"))]
    taken = 0
    for _ in range(6000):
        packet = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(1, len(packet))
            match rng.randrange(3):
                case 0:
                    packet[at] = rng.randrange(256)
                case 1:
                    del packet[at]
                case _:
                    packet.insert(at, rng.randrange(256))
        data = bytes(packet)
        parsed = parse_publish(data, 0, True)
        if parsed is None:
            continue
        message, end = parsed
        taken += 1
        assert message == paho_reads(data[:end]), data.hex()
    assert taken > 100, "the fuzz hardly exercised the parser"
