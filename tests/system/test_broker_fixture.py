"""Quick checks of the test broker helper in tests/broker.py."""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Broker, start_broker, wait_for_port

TIMEOUT = 10.0
TOPIC = "kairo/test/persist"


def skip_if_external() -> None:
    if os.environ.get("KAIRO_TEST_BROKER", "").startswith("external:"):
        pytest.skip("broker restarts need a local or docker broker")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path, persistence=True)
    try:
        yield b
    finally:
        b.close()


@dataclass
class Session:
    """A paho client plus the events its callbacks report."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    session_present: bool | None = None
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)


def open_session(broker: Broker, client_id: str, protocol: MQTTProtocolVersion) -> Session:
    """Connect a persistent (non-clean) session and wait for CONNACK."""
    v5 = protocol == mqtt.MQTTv5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if v5 else False,
    )
    session = Session(client)

    def on_connect(_c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            session.session_present = flags.session_present
            session.connected.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *_args: session.subscribed.set()
    client.on_message = lambda _c, _u, msg: session.messages.put(msg)
    if v5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect(broker.host, broker.port, clean_start=False, properties=props)
    else:
        client.connect(broker.host, broker.port)
    client.loop_start()
    assert session.connected.wait(TIMEOUT), "no CONNACK"
    return session


def close_session(session: Session) -> None:
    session.client.disconnect()
    session.client.loop_stop()


def publish_qos1(broker: Broker, topic: str, payload: bytes) -> None:
    """Publish one QoS 1 message and wait for its PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_queued_message_survives_restart(broker: Broker, protocol: MQTTProtocolVersion) -> None:
    """A QoS 1 message queued for an offline persistent session is delivered after restart()."""
    skip_if_external()
    client_id = f"kairo-persist-{int(protocol)}"
    session = open_session(broker, client_id, protocol)
    session.client.subscribe(TOPIC, qos=1)
    assert session.subscribed.wait(TIMEOUT), "no SUBACK"
    close_session(session)

    publish_qos1(broker, TOPIC, b"survives")
    port = broker.port
    broker.restart()
    assert broker.port == port

    session = open_session(broker, client_id, protocol)
    try:
        assert session.session_present is True
        msg = session.messages.get(timeout=TIMEOUT)
        assert (msg.topic, msg.payload, msg.qos) == (TOPIC, b"survives", 1)
    finally:
        close_session(session)


def test_kill_then_start_same_port(broker: Broker) -> None:
    """kill() drops the listener and start() brings the broker back on the same port."""
    skip_if_external()
    port = broker.port
    broker.kill()
    assert not wait_for_port(broker.host, port, 0.0)
    broker.start()
    assert broker.port == port
    assert wait_for_port(broker.host, port, TIMEOUT)
    publish_qos1(broker, "kairo/test/alive", b"x")


def test_bad_config_raises_with_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that cannot start raises RuntimeError quoting mosquitto's output."""
    monkeypatch.delenv("KAIRO_TEST_BROKER", raising=False)
    with pytest.raises(RuntimeError, match="no_such_option"):
        start_broker(tmp_path, extra_conf="no_such_option 1")


def test_external_refuses_non_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """external:HOST:PORT is only accepted for loopback hosts."""
    monkeypatch.setenv("KAIRO_TEST_BROKER", "external:10.0.0.1:1883")
    with pytest.raises(RuntimeError, match="loopback"):
        start_broker(tmp_path)


def test_external_cannot_restart(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An external broker is usable but restart() raises NotImplementedError."""
    monkeypatch.setenv("KAIRO_TEST_BROKER", f"external:{broker.host}:{broker.port}")
    external = start_broker(tmp_path / "ext")
    assert (external.host, external.port, external.log_path) == (broker.host, broker.port, None)
    with pytest.raises(NotImplementedError):
        external.restart()
    external.close()
    publish_qos1(external, "kairo/test/external", b"x")
