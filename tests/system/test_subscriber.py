"""End-to-end ingest through a real Mosquitto into a real SQLite file, one sidecar in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import wait_until
from tests.support.broker import Broker
from tests.support.inprocess import Running, start_inprocess


@pytest.fixture
def running(tmp_path: Path, broker: Broker) -> Iterator[Running]:
    run = start_inprocess(tmp_path, broker)
    yield run
    run.sidecar.request_stop()
    run.thread.join(15)


def publisher(broker: Broker, *, v5: bool = True) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2,
                         protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def publish(client: paho.Client, topic: str, payload: bytes, *, qos: int = 1,
            properties: Properties | None = None) -> None:
    info = client.publish(topic, payload, qos=qos, properties=properties)
    info.wait_for_publish(10)


def test_kairo_json_envelope_round_trips(running: Running, broker: Broker):
    """A JSON Kairo envelope is stored with its columns, payload and metadata intact."""
    client = publisher(broker)
    envelope = {"id": "0b9f1d36-7e3c-4cc4-9d8e-1a1a1a1a1a1a", "type": "kairo.user.message",
                "source": "app", "payload": {"text": "hi", "n": [1, 2.5]},
                "metadata": {"timestamp": "2026-01-02T03:04:05.678Z", "correlationId": "wf-1",
                             "causationId": "c-0", "traceId": "t-1", "custom": {"k": 1}}}
    publish(client, "kairo/user/message", json.dumps(envelope).encode())
    row = wait_until(lambda: running.event(envelope["id"]), message="stored event")
    assert row["topic"] == "kairo/user/message" and row["type"] == "kairo.user.message"
    assert row["source"] == "app"
    assert json.loads(row["payload"]) == envelope["payload"]
    assert json.loads(row["metadata"]) == envelope["metadata"]
    assert row["created_at"] == 1767323045678
    assert (row["correlation_id"], row["causation_id"], row["trace_id"]) == ("wf-1", "c-0", "t-1")
    client.loop_stop()


def test_kairo_msgpack_envelope_round_trips(running: Running, broker: Broker):
    """A MessagePack envelope is stored with its payload as JSON."""
    client = publisher(broker)
    envelope = {"id": "mp-1", "type": "kairo.sensor.temp", "source": "pi",
                "payload": {"celsius": 21.5, "ok": True}, "metadata": {"timestamp": 1700000000123}}
    publish(client, "kairo/sensor/temp", msgspec.msgpack.encode(envelope))
    row = wait_until(lambda: running.event("mp-1"), message="stored event")
    assert json.loads(row["payload"]) == {"celsius": 21.5, "ok": True}
    assert row["created_at"] == 1700000000123
    client.loop_stop()


def test_cloudevent_structured_round_trips(running: Running, broker: Broker):
    """A structured-mode CloudEvent is stored with its attributes in metadata."""
    client = publisher(broker)
    event = {"specversion": "1.0", "id": "ce-1", "source": "/devices/7", "type": "com.kairo.door",
             "time": "2026-03-01T10:00:00+02:00", "subject": "front", "data": {"open": True},
             "datacontenttype": "application/json", "correlationid": "wf-2",
             "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/cloudevents+json"
    publish(client, "kairo/door", json.dumps(event).encode(), properties=props)
    row = wait_until(lambda: running.event("ce-1"), message="stored event")
    assert (row["type"], row["source"]) == ("com.kairo.door", "/devices/7")
    assert json.loads(row["payload"]) == {"open": True}
    meta = json.loads(row["metadata"])
    assert meta["subject"] == "front" and meta["specversion"] == "1.0"
    assert row["correlation_id"] == "wf-2"
    assert row["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert row["created_at"] == 1772352000000


def test_cloudevent_binary_mode_round_trips(running: Running, broker: Broker):
    """A binary-mode CloudEvent (attributes in MQTT 5 user properties) is stored."""
    client = publisher(broker)
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("specversion", "1.0"), ("id", "ceb-1"), ("type", "com.kairo.light"),
                          ("source", "/lights/2"), ("correlationid", "wf-3")]
    publish(client, "kairo/light", b'{"on": false}', properties=props)
    row = wait_until(lambda: running.event("ceb-1"), message="stored event")
    assert json.loads(row["payload"]) == {"on": False}
    assert row["type"] == "com.kairo.light" and row["correlation_id"] == "wf-3"


def test_bare_object_and_qos0_are_stored_with_derived_type(running: Running, broker: Broker):
    """A bare JSON object at QoS 0 is stored: generated UUIDv7 id, type from the topic."""
    client = publisher(broker, v5=False)
    publish(client, "kairo/user/message", b'{"text": "plain"}', qos=0)
    rows = wait_until(lambda: running.rows("SELECT id, type, payload FROM events"))
    (event_id, event_type, payload), = rows
    assert event_type == "kairo.user.message" and json.loads(payload) == {"text": "plain"}
    assert event_id[14] == "7"  # UUID version 7


def test_malformed_message_goes_to_dead_letters_and_valid_ones_flow(running: Running,
                                                                     broker: Broker):
    """Malformed payloads land in dead_letters with a reason; the next valid event is stored."""
    client = publisher(broker)
    publish(client, "kairo/bad", b"\x00not json")
    publish(client, "kairo/bad", b'{"id": 5}')
    publish(client, "kairo/ok", b'{"id": "ok-1", "payload": 1}')
    wait_until(lambda: running.event("ok-1"))
    dead = wait_until(lambda: running.rows(
        "SELECT topic, reason FROM dead_letters ORDER BY id") if len(running.rows(
            "SELECT id FROM dead_letters")) == 2 else None)
    assert [t for t, _ in dead] == ["kairo/bad", "kairo/bad"]
    assert "not a JSON object" in dead[0][1] and "invalid event: id: " in dead[1][1]


def test_state_topic_online_then_offline_on_clean_stop(tmp_path: Path, broker: Broker):
    """kairo-sidecar/state is retained "online" while running and "offline" after a stop."""
    run = start_inprocess(tmp_path, broker)
    seen: list[bytes] = []
    watcher = paho.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: seen.append(m.payload)
    watcher.on_connect = lambda c, u, f, r, p: c.subscribe("kairo-sidecar/state", 1)
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    wait_until(lambda: b"online" in seen, message="retained online")
    run.sidecar.request_stop()
    run.thread.join(15)
    wait_until(lambda: seen and seen[-1] == b"offline", message="offline")
    watcher.loop_stop()


def test_requests_topic_messages_are_not_stored(running: Running, broker: Broker):
    """Only the configured topics are stored: the sidecar's own topics are not events."""
    client = publisher(broker)
    publish(client, "kairo-sidecar/request/query", b'{"limit": 1}')
    publish(client, "kairo/marker", b'{"id": "marker"}')
    wait_until(lambda: running.event("marker"))
    assert running.rows("SELECT count(*) FROM events")[0][0] == 1
