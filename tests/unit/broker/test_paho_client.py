"""The paho internals ``sidecar.broker.paho_client`` relies on, checked against the installed
paho, and ``[mqtt] fast_client``: the fast client against a real broker, ingest without it."""

from __future__ import annotations

import inspect
import json
import queue
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sidecar.broker.paho_client import Client, _BufferedSocket
from sidecar.config import load_config
from tests.conftest import wait_until
from tests.support.broker import Broker
from tests.system.test_subscriber import publish, publisher, start_inprocess

# Every private name of paho the subclass (and the subscriber) touch, with the parameters it
# passes: a paho release that renames or reshapes one must fail here, by name.
PRIVATE_METHODS = {
    "_create_socket": [],  # overridden; its socket is wrapped
    "_packet_queue": ["command", "packet", "mid", "qos"],  # ack_many queues PUBACKs with it
}
PUBLIC_METHODS = {
    "reconnect": [],  # overridden: records last_connect_error
    "loop_read": ["max_packets"],  # overridden: drains the buffer
    "ack": ["mid", "qos"],  # requests, and every ack with fast_client = false
}
INSTANCE_ATTRIBUTES = ["_sock", "_transport"]  # read by loop_read and _create_socket
MESSAGE_SLOTS = ["_topic", "properties"]  # the subscriber: raw topic bytes, MQTT 5 properties


def _parameters(function: object) -> list[str]:
    return [name for name in inspect.signature(function).parameters  # type: ignore[arg-type]
            if name != "self"]


@pytest.mark.parametrize("name,params", [*PRIVATE_METHODS.items(), *PUBLIC_METHODS.items()])
def test_paho_client_methods_the_subclass_uses_exist(name: str, params: list[str]):
    """Each paho.Client method paho_client overrides or calls exists and takes what we pass."""
    function = getattr(paho.Client, name, None)
    assert callable(function), (
        f"paho-mqtt {version('paho-mqtt')} has no Client.{name}: "
        "sidecar/broker/paho_client.py needs fixing (or run with [mqtt] fast_client = false)")
    got = _parameters(function)
    assert got[:len(params)] == params, (
        f"paho.Client.{name} now takes {got}, paho_client passes {params}")
    extra = [p for p, spec in inspect.signature(function).parameters.items()
             if p not in params and p != "self" and spec.default is inspect.Parameter.empty]
    assert not extra, f"paho.Client.{name} now requires {extra}, paho_client does not pass them"


@pytest.mark.parametrize("name", INSTANCE_ATTRIBUTES)
def test_paho_client_attributes_the_subclass_reads_exist(name: str):
    """Each private attribute paho_client reads is set by paho.Client's constructor."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    assert hasattr(client, name), (
        f"paho.Client instances have no {name}: sidecar/broker/paho_client.py needs fixing")


@pytest.mark.parametrize("name", MESSAGE_SLOTS)
def test_paho_message_attributes_the_subscriber_reads_exist(name: str):
    """The MQTTMessage attributes the subscriber reads (raw topic, properties) exist."""
    assert name in paho.MQTTMessage.__slots__, f"paho.MQTTMessage has no {name} any more"


def test_paho_still_calls_what_the_subclass_overrides():
    """paho's reconnect opens its socket through _create_socket, and its loop asks the socket
    for pending() (else buffered packets would wait in select) and returns MQTT_ERR_SUCCESS."""
    assert "self._create_socket()" in inspect.getsource(paho.Client.reconnect), (
        "paho.Client.reconnect no longer calls _create_socket: the buffered socket is unused")
    assert ".pending()" in inspect.getsource(paho.Client._loop), (
        "paho.Client._loop no longer asks the socket for pending(): buffered packets would wait")
    assert paho.MQTT_ERR_SUCCESS == 0


def _session_client(broker: Broker, client_id: str, got: queue.Queue[paho.MQTTMessage],
                    cls: type[paho.Client] = Client) -> paho.Client:
    client = cls(CallbackAPIVersion.VERSION2, client_id=client_id,
                 protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    subscribed: queue.Queue[bool] = queue.Queue()
    client.on_message = lambda c, u, msg: got.put(msg)
    client.on_subscribe = lambda *a: subscribed.put(True)
    client.on_connect = lambda c, *a: c.subscribe("guard/#", qos=1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    assert subscribed.get(timeout=10)
    return client


def test_fast_client_reads_through_its_buffer_and_ack_many_acks(broker: Broker):
    """Against a real broker the fast client's socket is the buffered one, and ack_many's
    PUBACKs reach the broker: after a reconnect only the message left unacked comes again."""
    got: queue.Queue[paho.MQTTMessage] = queue.Queue()
    client = _session_client(broker, "guard-fast", got)
    assert isinstance(client._sock, _BufferedSocket)
    sender = publisher(broker)
    for n in range(3):
        publish(sender, f"guard/{n}", b"m%d" % n)
    first = [got.get(timeout=10) for _ in range(3)]
    assert [m.payload for m in first] == [b"m0", b"m1", b"m2"]
    assert isinstance(client, Client)
    client.ack_many([first[0].mid, first[1].mid])  # m2 stays unacked
    client.disconnect()
    client.loop_stop()

    again: queue.Queue[paho.MQTTMessage] = queue.Queue()
    client = _session_client(broker, "guard-fast", again)
    publish(sender, "guard/marker", b"marker")
    seen = [again.get(timeout=10).payload]
    while seen[-1] != b"marker":
        seen.append(again.get(timeout=10).payload)
    assert seen == [b"m2", b"marker"]
    client.disconnect()
    client.loop_stop()
    sender.loop_stop()


def test_fast_client_is_on_by_default_and_can_be_switched_off():
    """[mqtt] fast_client defaults to true; KAIRO_SIDECAR_MQTT__FAST_CLIENT=false turns it off."""
    assert load_config(environ={}).mqtt.fast_client is True
    off = load_config(environ={"KAIRO_SIDECAR_MQTT__FAST_CLIENT": "false"})
    assert off.mqtt.fast_client is False


def test_ingest_end_to_end_with_paho_own_client(tmp_path: Path, broker: Broker):
    """With fast_client = false the sidecar runs on paho's own Client: events are stored, and
    their acks reach the broker (after a restart nothing is delivered again)."""
    run = start_inprocess(tmp_path, broker, mqtt__fast_client="false")
    assert run.sidecar.subscriber is not None
    assert type(run.sidecar.subscriber._client) is paho.Client
    client = publisher(broker)
    for n in range(5):
        publish(client, "kairo/guard/e", json.dumps({"id": f"plain-{n}", "payload": n}).encode())
    publish(client, "kairo/guard/q0", b'{"id": "plain-q0", "payload": 0}', qos=0)
    wait_until(lambda: run.rows("SELECT count(*) FROM events")[0][0] == 6, message="6 events")
    run.sidecar.request_stop()
    run.thread.join(15)
    assert not run.thread.is_alive()

    run = start_inprocess(tmp_path, broker, mqtt__fast_client="false")
    publish(client, "kairo/guard/e", b'{"id": "plain-marker", "payload": 1}')
    wait_until(lambda: run.event("plain-marker"), message="the marker stored")
    assert run.sidecar.stats.duplicates == 0, "acked events were delivered again"
    assert run.rows("SELECT count(*) FROM events")[0][0] == 7
    run.sidecar.request_stop()
    run.thread.join(15)
    client.loop_stop()
