"""Bad input through the real daemon, seeded and reproducible: 10,000 malformed payloads
interleaved with valid events, MQTT 5 content types and user properties, and topic edge cases.
The daemon stays up, every valid event is stored once, every invalid message is one dead letter
with a reason, and nothing is an internal error. On SQLite and on PostgreSQL
(``tests.support.engines``), where an event holding U+0000 is a dead letter
(``storage refused the event``) and payloads compare as JSON values."""

from __future__ import annotations

import json
import random
import socket
import struct
from collections.abc import Callable

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sidecar.client import SidecarClient
from sidecar.errors import PayloadError
from sidecar.ingest.decode import decode_message
from tests.conftest import SidecarProcess, count_rows, wait_until
from tests.support import engines, scenarios
from tests.support.broker import Broker
from tests.support.faultkit import sidecar_env, wait_rows
from tests.support.publisher import Message, publish_all
from tests.support.stores import target_rows

pytestmark = pytest.mark.slow

SidecarFactory = Callable[..., SidecarProcess]
# both engines: this fixture overrides conftest's ``sidecar_factory`` (tests.support.engines)
sidecar_factory = engines.sidecar_factory
MAX_PAYLOAD = 8192
DEAD_LETTER_CAP = 4096


def test_10000_malformed_payloads_interleaved_with_valid_events(
        persistent_broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """10,000+ malformed payloads among 5,000 valid events: each valid stored, each bad dead-lettered.

    The seeded corpus (tests/fuzzcorpus.py, seed 6): 10,000 malformed payloads of 15 kinds, ~1,000
    oracle-judged mutations, 5,000 valid events, conflicts and exact copies. Each valid one stored
    once as the library decodes it, each bad one a dead letter with its reason."""
    sidecar = sidecar_factory(persistent_broker, **sidecar_env(
        ingest__max_payload_bytes=MAX_PAYLOAD, ingest__dead_letter_max_bytes=DEAD_LETTER_CAP)).start()
    result = scenarios.bad_input(persistent_broker, sidecar, seed=6, malformed=10_000, valid=5000,
                                 max_payload_bytes=MAX_PAYLOAD, dead_letter_max_bytes=DEAD_LETTER_CAP)
    print({k: v for k, v in result.__dict__.items() if k != "notes"}, result.notes["kinds"])
    assert not result.notes["problems"], result.notes["problems"]
    result.check()
    assert result.notes["malformed"] >= 10_000
    assert "message_handling_failed" not in sidecar.log_text()
    assert sidecar.terminate() == 0


# ---------------------------------------------------------------------------- MQTT 5 properties
CONTENT_TYPES = [None, "application/json", "application/msgpack", "application/cloudevents+json",
                 "text/plain", "text/plain; charset=utf-8", "application/octet-stream",
                 "APPLICATION/JSON", "application/json; charset=latin-1", "", "x" * 300,
                 "application/vnd.msgpack", "image/png"]


def _property_case(rng: random.Random, n: int) -> tuple[bytes, str | None, list[tuple[str, str]]]:
    """A payload with an MQTT 5 content type and user properties (some binary CloudEvents)."""
    data = rng.choice([
        b'{"id":"p%d","payload":{"a":1}}' % n, msgspec.msgpack.encode({"id": f"p{n}", "payload": [1]}),
        b'{"a":' + str(n).encode() + b"}", b"plain text \xc3\xa9", b"\xff\xfe\x00", b"", b"[1,2]",
        b'"str"', rng.randbytes(rng.randrange(1, 64)), b"{" * 3000, b"\x91" * 3000 + b"\x01",
    ])
    props: list[tuple[str, str]] = []
    if rng.random() < 0.6:
        props.append(("specversion", rng.choice(["1.0", "0.3", "", "x" * 2000])))
        for key in rng.sample(["id", "type", "source", "time", "traceparent", "correlationid",
                               "subject", "dataschema"], k=rng.randrange(0, 5)):
            value = rng.choice([f"{key}-{n}", "", "x" * 1100, "2024-01-02T03:04:05Z", "not-a-time",
                                "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "\U0001f600"])
            props.append((key, value if key != "id" else f"{value}-{n}"))
    if rng.random() < 0.2:
        props.append((rng.choice(["x-extra", "id", "\u00c4"]), f"again-{n}"))
    return data, rng.choice(CONTENT_TYPES), props


def test_mqtt5_content_types_and_user_properties(
        persistent_broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """1,500 messages with random MQTT 5 content types and user properties: daemon agrees with ingest.

    1,500 seeded messages with random MQTT 5 content types and user properties (binary CloudEvents,
    mismatched content types, huge attributes): each is stored or dead-lettered exactly as
    ``decode_message`` decides for the same bytes and properties."""
    sidecar = sidecar_factory(persistent_broker, **sidecar_env(
        ingest__max_payload_bytes=MAX_PAYLOAD)).start()
    rng = random.Random(606)
    cases = [_property_case(rng, n) for n in range(1500)]
    expected: dict[str, bool] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect(persistent_broker.host, persistent_broker.port)
    client.loop_start()
    try:
        infos = []
        for n, (data, content_type, props) in enumerate(cases):
            topic = f"kairo/props/{n}"
            try:
                decode_message(topic, data, received_at=0, max_payload_bytes=MAX_PAYLOAD,
                               content_type=content_type or None, user_properties=props or None)
                expected[topic] = True
            except PayloadError:
                expected[topic] = False
            properties = Properties(PacketTypes.PUBLISH)
            if content_type is not None:
                properties.ContentType = content_type
            if props:
                properties.UserProperty = props
            infos.append(client.publish(topic, data, qos=1, properties=properties))
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    stored = sum(expected.values())
    wait_rows(sidecar.db, stored, timeout=60, sidecar=sidecar)
    wait_rows(sidecar.db, len(cases) - stored, timeout=60, table="dead_letters",
              sidecar=sidecar)
    in_events = {t for (t,) in target_rows(sidecar.db, "SELECT topic FROM events")}
    dead = dict(target_rows(sidecar.db, "SELECT topic, reason FROM dead_letters"))
    wrong = [t for t, ok in expected.items() if ok != (t in in_events) or ok == (t in dead)]
    assert not wrong, [(t, dead.get(t)) for t in wrong[:10]]
    assert not [r for r in dead.values() if r.startswith(("internal error", "storage refused"))]
    assert 0 < stored < len(cases)
    assert sidecar.terminate() == 0


# ---------------------------------------------------------------------------- topics
def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        digit, n = n % 128, n // 128
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def raw_publish(host: str, port: int, topic: bytes, payload: bytes) -> bool:
    """Publish ``topic`` as raw bytes at QoS 1 with a hand-made MQTT 3.1.1 client; True if the
    broker acked it, False if it closed the connection (an invalid topic)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        client_id = b"kairo-raw-topic"
        variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id
        sock.sendall(b"\x10" + _remaining_length(len(variable)) + variable)
        assert sock.recv(4)[:1] == b"\x20", "no CONNACK"
        body = struct.pack("!H", len(topic)) + topic + b"\x00\x01" + payload
        sock.sendall(b"\x32" + _remaining_length(len(body)) + body)
        try:
            reply = sock.recv(4)
        except OSError:
            return False
        return reply[:1] == b"\x40"


ACCEPTED_TOPICS = [
    "kairo", "kairo/", "kairo//x", "kairo///", "kairo/a//b/", "kairo/ / ", "kairo/$x",
    "kairo/\U0001f600/\U0001f680", "kairo/\u65e5\u672c\u8a9e/\u6e29\u5ea6", "kairo/\u00e9",
    "kairo/e\u0301", "kairo/\u05e2\u05d1\u05e8\u05d9\u05ea", "kairo/\ufeff", "kairo/\U000e0001",
    "kairo/\u200b", "kairo/" + "a" * 65_000, "kairo/" + "/".join(["l"] * 150),
    "kairo/" + "\u00e9" * 20_000,
]
REFUSED_TOPICS = [b"kairo/\xff", b"kairo/\xc0\xaf", b"kairo/\xed\xa0\x80", b"kairo/\x00",
                  b"kairo/\x01", b"kairo/\xef\xbf\xbf", b"kairo/a+b", b"kairo/#"]


def test_topic_edge_cases(persistent_broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """Long, unusual-UTF-8 and empty-level topics are stored exactly and found by filters.

    Very long topics (65,000 bytes, 150 levels), unusual UTF-8 (emoji, RTL, combining marks, BOM,
    tags) and empty levels are stored with the exact topic, the derived type and source, and found
    by topic filters; topics the broker refuses (invalid UTF-8, NUL, controls, wildcards) never
    reach the sidecar and do not disturb it."""
    sidecar = sidecar_factory(persistent_broker, **sidecar_env(
        ingest__max_payload_bytes=200_000)).start()
    for topic in REFUSED_TOPICS:
        assert raw_publish(persistent_broker.host, persistent_broker.port, topic, b'{"x":1}') is False
    messages = [Message(str(i), topic, b'{"payload": {"i": %d}}' % i)
                for i, topic in enumerate(ACCEPTED_TOPICS)]
    publish_all(persistent_broker.host, persistent_broker.port, messages)
    wait_rows(sidecar.db, len(messages), timeout=30, sidecar=sidecar)
    rows = [(t, ty, so, p if isinstance(p, dict) else json.loads(p)) for t, ty, so, p in
            target_rows(sidecar.db, "SELECT topic, type, source, payload FROM events")]
    assert sorted(rows, key=lambda r: r[0]) == sorted(
        ((t, t.replace("/", "."), t, {"i": i}) for i, t in enumerate(ACCEPTED_TOPICS)),
        key=lambda r: r[0])
    assert count_rows(sidecar.db, "dead_letters") == 0
    with SidecarClient(persistent_broker.host, persistent_broker.port, timeout=30) as client:
        def topics_for(topic_filter: str) -> set[str]:
            return {e["topic"] for e in client.query_all(topic=topic_filter, limit=100)}

        assert topics_for("kairo/+") == {t for t in ACCEPTED_TOPICS if t.count("/") == 1}
        assert topics_for("kairo/+/x") == {"kairo//x"}
        assert topics_for("kairo/\U0001f600/#") == {"kairo/\U0001f600/\U0001f680"}
        assert topics_for("kairo") == {"kairo"}
        assert topics_for("kairo/#") == set(ACCEPTED_TOPICS)
        assert topics_for("kairo/" + "/".join(["+"] * 150)) == {ACCEPTED_TOPICS[16]}
        long_type = "kairo." + "a" * 65_000
        found = client.query(type="kairo.aaaa*", limit=10).events
        assert [e["type"] for e in found] == [long_type]
    wait_until(lambda: sidecar.proc is not None and sidecar.proc.poll() is None)
    assert sidecar.terminate() == 0
