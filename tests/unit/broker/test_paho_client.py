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
from sidecar.broker.publish import Publish
from sidecar.broker.subscriber import _as_publish
from sidecar.config import load_config
from tests.conftest import wait_until
from tests.support.broker import Broker
from tests.support.inprocess import start_inprocess
from tests.system.test_subscriber import publish, publisher

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
INSTANCE_ATTRIBUTES = [
    "_sock", "_transport",  # read by loop_read and _create_socket
    # the lean path: is paho half-way through a packet, manual acks on, MQTT 5 or not, the
    # mutex paho holds around on_message, keep-alive's last-received time
    "_in_packet", "_manual_ack", "_protocol", "_in_callback_mutex", "_msgtime_mutex",
    "_last_bytes_received",
]
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


def test_paho_still_works_as_the_lean_path_assumes():
    """paho marks 'no packet half read' with _in_packet["command"] == 0 and resets it after each
    packet; it reads through the socket's recv (where a deferred answer is raised); it holds
    _in_callback_mutex around on_message; time_func is its keep-alive clock."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    assert client._in_packet["command"] == 0
    read = inspect.getsource(paho.Client._packet_read)
    assert "self._in_packet['command'] == 0" in read and '"command": 0' in read, (
        "paho.Client._packet_read no longer marks packet boundaries as paho_client expects")
    assert "self._sock.recv(" in inspect.getsource(paho.Client._sock_recv)
    assert "self._in_callback_mutex" in inspect.getsource(paho.Client._handle_on_message)
    assert "_last_bytes_received = time_func()" in read
    assert callable(paho.time_func)


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


# ---------------------------------------------------------------------------- the lean path
class _Collect:
    """A subscriber's messages, noting which path (lean or paho's on_message) delivered each."""

    def __init__(self, ack: paho.Client | None = None) -> None:
        self.lean: list[Publish] = []
        self.paho: list[Publish] = []
        self.order: list[Publish] = []
        self.ack = ack  # PUBACK each QoS 1 message on arrival (else the broker's window fills)

    def on_lean(self, msg: Publish) -> None:
        self.lean.append(msg)
        self.order.append(msg)
        if self.ack is not None and msg.qos == 1:
            self.ack.ack(msg.mid, 1)

    def on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        as_publish = _as_publish(msg)
        self.paho.append(as_publish)
        self.order.append(as_publish)
        if msg.qos == 2 or (self.ack is not None and msg.qos == 1):
            client.ack(msg.mid, msg.qos)


def _subscriber(broker: Broker, cls: type[paho.Client], got: _Collect, client_id: str,
                topic: str = "eq/#") -> paho.Client:
    client = cls(CallbackAPIVersion.VERSION2, client_id=client_id,
                 protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    client.on_message = got.on_message
    if isinstance(client, Client):
        client.on_lean_message = got.on_lean
    subscribed: queue.Queue[bool] = queue.Queue()
    client.on_subscribe = lambda *a: subscribed.put(True)
    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 300  # the broker then adds it to every PUBLISH
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=2, properties=sub_props)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    assert subscribed.get(timeout=10)
    return client


def _publish_properties(**values: object) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def test_lean_path_reads_what_paho_reads_from_a_real_broker(broker: Broker):
    """Through Mosquitto, the fast client's lean path and paho's own Client receive the same
    messages (QoS 0/1/2, retained, empty and 10 KB payloads, every property kind the broker
    forwards, a subscription identifier); QoS 2 and long property lists come via paho's path."""
    sender = publisher(broker)
    publish(sender, "eq/retained", b"kept", properties=_publish_properties(ContentType="text/x"))
    sender.publish("eq/retained", b"kept", qos=1, retain=True,
                   properties=_publish_properties(ContentType="text/x")).wait_for_publish(10)
    fast, plain = _Collect(), _Collect()
    fast_client = _subscriber(broker, Client, fast, "eq-fast")
    plain_client = _subscriber(broker, paho.Client, plain, "eq-plain")
    every = _publish_properties(
        PayloadFormatIndicator=1, MessageExpiryInterval=3600, ContentType="application/json",
        ResponseTopic="eq/reply", CorrelationData=b"\x00c",
        UserProperty=[("specversion", "1.0"), ("typé", "kairo.x"), ("typé", "twice")])
    sent = [("eq/q0", b"zero", 0, every), ("eq/q1", b"", 1, every), ("eq/q2", b"two", 2, every),
            ("eq/big", bytes(range(256)) * 40, 1, None),
            ("eq/long", b"long", 1, _publish_properties(UserProperty=[("k", "v" * 300)])),
            ("eq/ünï", b"utf8 topic", 1, _publish_properties(ContentType="text/plain"))]
    for topic, payload, qos, props in sent:
        publish(sender, topic, payload, qos=qos, properties=props)
    total = len(sent) + 1  # + the retained one
    wait_until(lambda: len(fast.order) == total and len(plain.order) == total,
               message="every message at both subscribers")

    def comparable(msgs: list[Publish]) -> list[Publish]:
        return sorted((m._replace(mid=0) for m in msgs), key=lambda m: m.topic)  # own packet ids

    assert comparable(fast.order) == comparable(plain.order)
    assert {m.topic for m in fast.paho} == {"eq/q2", "eq/long"}, "QoS 2 and long props: paho"
    retained = next(m for m in fast.lean if m.topic == "eq/retained")
    assert retained.retain and retained.content_type == "text/x"
    q1 = next(m for m in fast.lean if m.topic == "eq/q1")
    assert (q1.payload, q1.qos, q1.response_topic, q1.correlation_data) == (
        b"", 1, "eq/reply", b"\x00c")
    assert q1.user_properties == [("specversion", "1.0"), ("typé", "kairo.x"), ("typé", "twice")]
    for client in (fast_client, plain_client, sender):
        client.disconnect()
        client.loop_stop()


def test_lean_path_redelivery_has_dup_and_ack_many_still_acks(broker: Broker):
    """A QoS 1 message left unacked comes again after a reconnect with dup set, through the lean
    path; once acked with ack_many it never comes again."""
    sender = publisher(broker)
    got = _Collect()
    client = _subscriber(broker, Client, got, "eq-dup", topic="dup/#")
    publish(sender, "dup/a", b"a")
    wait_until(lambda: got.lean, message="the first delivery")
    assert not got.lean[0].dup
    client.disconnect()
    client.loop_stop()

    again = _Collect()
    client = _subscriber(broker, Client, again, "eq-dup", topic="dup/#")
    wait_until(lambda: again.lean, message="the redelivery")
    assert again.lean[0].dup and again.lean[0].payload == b"a"
    assert isinstance(client, Client)
    client.ack_many([again.lean[0].mid])
    publish(sender, "dup/marker", b"marker")
    wait_until(lambda: again.lean[-1].payload == b"marker", message="the marker")
    client.disconnect()
    client.loop_stop()

    last = _Collect()
    client = _subscriber(broker, Client, last, "eq-dup", topic="dup/#")
    publish(sender, "dup/marker2", b"marker2")
    wait_until(lambda: last.order and last.order[-1].payload == b"marker2", message="marker2")
    assert [m.payload for m in last.order] == [b"marker", b"marker2"], "acked 'a' came again"
    for c in (client, sender):
        c.disconnect()
        c.loop_stop()


def test_lean_path_keeps_order_across_buffer_boundaries(broker: Broker):
    """1,500 QoS 1 messages of ~5 KB (the broker sends 20 at a time: ~100 KB, so packets are cut
    at the 64 KiB reads) arrive complete and in order: whole packets through the lean path, the
    cut ones through paho's; keep-alive sees the bytes."""
    got = _Collect()
    client = _subscriber(broker, Client, got, "eq-many", topic="many/#")
    assert isinstance(client, Client)
    got.ack = client
    before = client._last_bytes_received
    sender = publisher(broker, v5=False)
    infos = [sender.publish(f"many/{n % 7}", b"%06d" % n + b"x" * 5000, qos=1)
             for n in range(1500)]
    for info in infos:
        info.wait_for_publish(30)
    wait_until(lambda: len(got.order) == 1500, timeout=30, message="1500 messages")
    assert [int(m.payload[:6]) for m in got.order] == list(range(1500))
    assert all(len(m.payload) == 5006 for m in got.order)
    assert len(got.lean) > 1000
    assert got.paho, "no packet was cut at a read boundary: paho's half of the path is untested"
    assert client._last_bytes_received > before
    for c in (client, sender):
        c.disconnect()
        c.loop_stop()
