"""The MQTT subscriber: the persistent session, and nothing about what the messages mean.

The paho network thread only hands off: each message becomes an ``InboundMessage`` (plain
values, no paho types) passed to ``on_event`` (``sidecar.ingest.intake`` decodes and queues it)
or, on ``<base>/request/#``, acked at once and passed to ``on_request`` (the API). Callbacks are
``attach``-ed before ``start``: the writer they feed needs this subscriber's ``ack``.

What stays here is the session: the receive window, the connection generation that keeps packet
ids of a previous connection from being acked on a new one (the broker re-sends those messages
anyway), the hand-over lock of ``stop_intake``, the retained ``online``/``offline`` state topic.
``[mqtt] fast_client`` picks the paho client: ``paho_client.Client`` (buffered reads, batched
acks, relying on paho internals) or, when false, paho's own ``Client`` as it ships.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sidecar.broker.connfail import network_reason, refusal_reason
from sidecar.broker.paho_client import Client
from sidecar.broker.publish import Publish
from sidecar.config import MQTTConfig
from sidecar.core.events import now_ms
from sidecar.core.inbound import AckToken, InboundMessage
from sidecar.logs import get_logger

log = get_logger("sidecar.mqtt")

MAX_RECEIVE_MAXIMUM = 65535

OnMessage = Callable[[InboundMessage], None]
# A new session began: call ``then`` (which subscribes) once the packet ids of the old one are
# forgotten downstream. The default calls it at once.
OnNewSession = Callable[[Callable[[], None]], None]


def receive_window(config: MQTTConfig, queue_size: int) -> int:
    """How many unacked QoS 1 messages the broker may have in flight to us.

    MQTT 5: the Receive Maximum we ask for, never more than the queue holds. MQTT 3.1.1: the
    broker's ``max_inflight_messages``, which the user states as ``[mqtt] max_inflight``.
    """
    if config.protocol == "5":
        return max(1, min(queue_size, MAX_RECEIVE_MAXIMUM))
    return config.max_inflight


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: an API answer written right after a PUBACK would otherwise wait for the
    broker's delayed TCP ACK (about 40 ms per request)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _now(then: Callable[[], None]) -> None:
    then()


def _unattached(msg: InboundMessage) -> None:
    raise RuntimeError("Subscriber.attach(on_event=...) must come before start()")


def _as_publish(msg: paho.MQTTMessage) -> Publish:
    """paho's message as the lean path's ``Publish``: the same values, whichever path read it."""
    try:
        topic = msg.topic
    except UnicodeDecodeError:  # stored as a dead letter, under a readable name
        topic = msg._topic.decode("utf-8", "backslashreplace")
    props = msg.properties
    if props is None:  # MQTT 3.1.1
        return Publish(topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.mid)
    correlation = getattr(props, "CorrelationData", None)
    return Publish(topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.mid,
                   getattr(props, "ContentType", None), getattr(props, "UserProperty", None),
                   getattr(props, "ResponseTopic", None),
                   bytes(correlation) if correlation is not None else None)


# Requests every member of a shared group receives: they act on a stream one member runs.
GROUP_WIDE_OPS = ("replay/cancel", "replay/renew")


def shared_subscriptions(subscriptions: list[tuple[str, int]], group: str | None,
                         request_prefix: str | None) -> list[tuple[str, int]]:
    """``subscriptions`` through the shared group ``group`` (``$share/<group>/<filter>``: the
    broker gives each message to one member), plus, for the requests, the ops that reach every
    member (``GROUP_WIDE_OPS``). Messages arrive on their own topic, without the prefix."""
    if group is None:
        return subscriptions
    shared = [(f"$share/{group}/{topic}", qos) for topic, qos in subscriptions]
    if request_prefix is not None:
        shared.extend((request_prefix + op, 1) for op in GROUP_WIDE_OPS)
    return shared


class Subscriber:
    """A persistent-session subscriber handing messages to callbacks."""

    def __init__(self, config: MQTTConfig, *, queue_size: int,
                 api_base_topic: str | None = None, extra_topics: tuple[str, ...] = ()) -> None:
        self._config = config
        # Requests (``<base>/request/<op>``) are acked at once and handed to ``on_request``;
        # they are never events. Config makes sure the event topics cannot match them.
        self._request_prefix = f"{api_base_topic}/request/" if api_base_topic is not None else None
        self._subscriptions = [(topic, config.qos) for topic in config.topics]
        if self._request_prefix is not None:
            self._subscriptions.append((self._request_prefix + "#", 1))
        # more QoS 1 topics handed to ``on_event`` (the kv store's ``<base>/kv/set/#``)
        self._subscriptions.extend((topic, 1) for topic in extra_topics)
        self._subscriptions = shared_subscriptions(self._subscriptions, config.shared_group,
                                                   self._request_prefix)
        self._on_event: OnMessage = _unattached
        self._on_request: OnMessage = _unattached
        self._on_new_session: OnNewSession = _now
        self.window = receive_window(config, queue_size)
        self._generation = 0
        self._accepting = True
        self._intake = threading.Lock()
        self._closing = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        # when the connection was last lost (time.monotonic), None while connected: how long
        # the broker has been away, for /healthz (never connected yet counts from here)
        self.disconnected_at: float | None = time.monotonic()
        self._client = self._make_client()
        self._ack_many: Callable[[list[int]], None] = (
            self._client.ack_many if isinstance(self._client, Client) else self._ack_one_by_one)

    # ------------------------------------------------------------------ set-up
    def attach(self, *, on_event: OnMessage, on_request: OnMessage | None = None,
               on_new_session: OnNewSession | None = None) -> None:
        """Set where messages go; before ``start``. ``on_request`` is required when the
        subscriber was made with ``api_base_topic`` (requests are subscribed), else refused."""
        if (on_request is None) != (self._request_prefix is None):
            raise ValueError("on_request must be given exactly when api_base_topic is set")
        self._on_event = on_event
        self._on_request = on_request if on_request is not None else _unattached
        self._on_new_session = on_new_session if on_new_session is not None else _now

    def _make_client(self) -> paho.Client:
        cfg = self._config
        v5 = cfg.protocol == "5"
        # ``fast_client``: paho's Client with buffered reads and batched acks (paho_client),
        # which relies on paho internals; off, paho's own Client as it ships.
        client = (Client if cfg.fast_client else paho.Client)(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set(ca_certs=cfg.tls.ca, certfile=cfg.tls.cert, keyfile=cfg.tls.key,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(cfg.tls.insecure)
        client.will_set(cfg.state_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min_delay)),
                                   max_delay=max(1, int(cfg.reconnect_max_delay)))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if isinstance(client, Client):
            client.on_lean_message = self._on_publish  # QoS 0/1 PUBLISH without paho's parse
        client.on_socket_open = _no_delay
        return client

    def _connect_properties(self) -> Properties | None:
        if self._config.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._config.session_expiry
        props.ReceiveMaximum = self.window
        return props

    def start(self) -> None:
        """Connect in the background; paho reconnects with backoff from then on."""
        if self._on_event is _unattached:
            raise RuntimeError("Subscriber.attach(on_event=...) must come before start()")
        cfg = self._config
        kwargs: dict[str, Any] = {"keepalive": cfg.keepalive}
        if cfg.protocol == "5":
            kwargs["clean_start"] = False
            kwargs["properties"] = self._connect_properties()
        log.info("mqtt_connecting", host=cfg.host, port=cfg.port, client_id=cfg.client_id,
                 protocol=cfg.protocol, receive_window=self.window, fast_client=cfg.fast_client)
        self._client.connect_async(cfg.host, cfg.port, **kwargs)
        self._client.loop_start()

    def stop_intake(self) -> None:
        """Take no more messages; unacked ones stay with the broker for the next start.

        Waits for a message being handed over right now, so that nothing reaches ``on_event``
        after this returns (the writer's stop marker must be the last thing in its queue).
        """
        with self._intake:
            self._accepting = False

    def close(self, timeout: float = 2.0) -> None:
        """Publish ``offline``, disconnect cleanly, stop the network thread."""
        client = self._client
        self._closing = True
        if self.connected.is_set():
            info = client.publish(self._config.state_topic, b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        client.disconnect()
        client.loop_stop()
        log.info("mqtt_closed")

    # ------------------------------------------------------------------ acks (writer thread)
    def ack(self, tokens: Sequence[AckToken]) -> None:
        """PUBACK these messages (``InboundMessage.token``), in this order; those received on
        an earlier connection are skipped (their packet ids mean nothing on this one)."""
        generation = self._generation
        mids = [mid for token_generation, mid in tokens if token_generation == generation]
        self._ack_many(mids)  # one write for the batch, in receive order
        stale = len(tokens) - len(mids)
        if stale:
            log.info("acks_skipped_after_reconnect", count=stale)

    def _ack_one_by_one(self, mids: list[int]) -> None:
        """``ack_many`` of paho's own Client (``fast_client = false``): one PUBACK per call."""
        ack = self._client.ack
        for mid in mids:
            ack(mid, 1)

    # ------------------------------------------------------------------ callbacks (network thread)
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("mqtt_connect_refused", host=self._config.host, port=self._config.port,
                      reason=refusal_reason(reason.value), code=reason.value)
            return
        self._generation += 1
        session_present = bool(getattr(flags, "session_present", False))
        log.info("mqtt_connected", session_present=session_present, generation=self._generation)
        if not session_present:
            # A new session has no subscription yet, so nothing arrives until we subscribe:
            # subscribe only once the writer has forgotten the old session's packet ids.
            self._on_new_session(self._subscribe)
            event = "mqtt_session_lost" if self._generation > 1 else "mqtt_session_new"
            (log.warning if self._generation > 1 else log.info)(
                event, hint="the broker holds no session for this client id: messages published "
                            "while none existed are not stored (first start, or broker "
                            "persistence/session expiry lost it)")
        else:
            self._subscribe()
        self.connected.set()
        self.disconnected_at = None
        client.publish(self._config.state_topic, b"online", qos=1, retain=True)

    def _subscribe(self) -> None:
        self._client.subscribe(self._subscriptions)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        exc = getattr(client, "last_connect_error", None)  # paho_client only
        log.warning("mqtt_connect_failed", host=self._config.host, port=self._config.port,
                    reason=network_reason(exc, tls=self._config.tls is not None)
                    if exc is not None else "connection failed")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        if self._closing:
            log.info("mqtt_disconnected", reason=str(reason))
        else:
            log.warning("mqtt_disconnected", reason=str(reason), reconnecting=True)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        failed = [(t, str(r)) for (t, _), r in zip(self._subscriptions, reasons, strict=False)
                  if r.is_failure]
        if failed:
            log.error("mqtt_subscribe_refused", topics=failed)
            return
        log.info("mqtt_subscribed", topics=[t for t, _ in self._subscriptions],
                 qos=[r.value for r in reasons])
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """paho's path: every message with ``fast_client = false``, else what the lean path
        leaves to paho (QoS 2, a topic that is not UTF-8, long property lists, ...)."""
        self._on_publish(_as_publish(msg))

    def _on_publish(self, msg: Publish) -> None:
        with self._intake:  # uncontended but for stop_intake
            if self._accepting:  # else not acked: the broker delivers it again after the restart
                self._hand_over(msg)

    def _hand_over(self, msg: Publish) -> None:
        topic = msg.topic
        prefix = self._request_prefix
        request = prefix is not None and topic.startswith(prefix)
        if request and msg.qos:
            self._client.ack(msg.mid, msg.qos)  # a request is not an event: acked on arrival
        inbound = InboundMessage(
            topic, msg.payload, msg.qos, msg.retain, msg.dup, msg.mid, self._generation,
            now_ms(), msg.content_type, msg.user_properties, msg.response_topic,
            msg.correlation_data)
        if not request:
            self._on_event(inbound)
            return
        try:
            self._on_request(inbound)
        except Exception:  # never let a request crash the network thread
            log.exception("request_handoff_failed")

    # ------------------------------------------------------------------ publishing (any thread)
    def publish(self, topic: str, payload: bytes, *, correlation_data: bytes | None = None,
                content_type: str | None = None, retain: bool = False) -> paho.MQTTMessageInfo:
        """Publish an answer at QoS 1 (thread-safe); the returned info tells when the broker
        has acked it, which is how replay streams bound their messages in flight."""
        properties = None
        if self._config.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            if content_type:
                properties.ContentType = content_type
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        return self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
