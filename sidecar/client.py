"""A small Python client for the sidecar's request API (paho; MQTT 5 or 3.1.1).

    from sidecar.client import SidecarClient

    with SidecarClient("127.0.0.1", 1883) as kairo:
        page = kairo.query(correlation_id="workflow-123", limit=50)
        event = kairo.get(page.events[0]["id"])
        for event in kairo.replay(type="kairo.user.*"):
            ...

Answers come back on a topic of this client's own (``<base>/response/<client id>``): with
MQTT 5 as the request's Response Topic, matched by Correlation Data; with 3.1.1 as ``reply_to``,
matched by ``transaction``. An error answer raises ``RequestError`` with the sidecar's code; no
answer within ``timeout`` raises ``TimeoutError``. This module is user-side: the daemon never
imports it.

Replay streams never outlive their requester. Each replay carries this connection's ``owner``
token, and the connection's MQTT Will is a ``replay/cancel`` by that owner: when the process is
killed (even SIGKILL) or its network dies, the broker publishes the Will and the sidecar ends
every stream the connection opened. Each stream also has a ``lease`` (30 s by default) that a
thread of this client renews every ``lease / 3`` seconds, so a link cut silently (the Will comes
only after the broker's keep-alive timeout) frees the stream too. ``close()`` cancels whatever
still runs; a lost connection fails the requests and replays in progress with code
``disconnected`` (a new owner token and Will are used from the reconnection on).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sidecar.broker.connfail import network_reason, refusal_reason
from sidecar.errors import BrokerError, RequestError

_CONTENT_TYPES = {"json": "application/json", "msgpack": "application/msgpack"}


@dataclass(frozen=True)
class Page:
    """One page of a query: the events and the cursor of the next page (``None`` at the end)."""

    events: list[dict[str, Any]]
    next: int | None
    unindexed_where: list[str] | None = None  # where keys no path index served


@dataclass(frozen=True)
class SearchPage:
    """One page of ``search``: hits (``{"event", "snippet", "rank"}`` dicts), the cursor of the
    next page (``None`` at the end), and whether every stored event is indexed yet (if not,
    events with ``indexed_through < seq < live_from`` are not searched)."""

    hits: list[dict[str, Any]]
    next: int | str | None
    complete: bool
    indexed_through: int
    live_from: int
    rank_window: int | None = None  # ranked among the newest this many matches only


@dataclass(frozen=True)
class LatestPage:
    """One page of ``latest``: the newest event per key, the last key when more may follow
    (``None`` at the end), and whether a path index served it."""

    events: list[dict[str, Any]]
    next: Any
    indexed: bool


class SidecarClient:
    """One connection to the broker, shared by any number of requests (thread-safe)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, protocol: str = "5",
                 base_topic: str = "kairo-sidecar", timeout: float = 10.0,
                 username: str | None = None, password: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_insecure: bool = False,
                 encoding: str = "json", keepalive: int = 60,
                 client_id: str | None = None, lease: float | None = 30.0) -> None:
        if protocol not in ("5", "3.1.1"):
            raise ValueError("protocol must be '5' or '3.1.1'")
        if encoding not in _CONTENT_TYPES:
            raise ValueError("encoding must be 'json' or 'msgpack'")
        if lease is not None and not 1 <= lease <= 3600:
            raise ValueError("lease must be between 1 and 3600 seconds, or None")
        self.host, self.port = host, port
        self.timeout = timeout
        self.base_topic = base_topic
        self._v5 = protocol == "5"
        self._encoding = encoding
        self._keepalive = keepalive
        self.client_id = client_id or f"kairo-client-{uuid.uuid4().hex[:12]}"
        # Answers come to <base>/response/<client id>: a broker ACL pattern
        # "kairo-sidecar/response/%c/#" lets each client read only its own answers.
        self._reply_topic = f"{base_topic}/response/{self.client_id}"
        self._pending: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._failure: str | None = None
        self.lease = lease
        self._owner = uuid.uuid4().hex  # names this connection's streams (a new one per connection)
        self._streams: dict[str, str | None] = {}  # replay key -> stream id, while it runs
        self._replayed = False
        self._closing = threading.Event()
        self._renewer: threading.Thread | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else True,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._tls = bool(tls_ca or tls_cert)
        if self._tls:
            self._client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key,
                                 cert_reqs=ssl.CERT_REQUIRED)
            self._client.tls_insecure_set(tls_insecure)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_socket_open = _no_delay
        self._set_will()

    # ------------------------------------------------------------------ connection
    def connect(self) -> SidecarClient:
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive)
        except OSError as exc:
            raise BrokerError(f"cannot connect to the broker at {self.host}:{self.port}: "
                              f"{network_reason(exc, tls=self._tls)}") from None
        self._client.loop_start()
        if not self._ready.wait(self.timeout) or self._failure:
            self.close()
            raise BrokerError(self._failure or f"no answer from the broker at {self.host}:"
                              f"{self.port} within {self.timeout}s")
        if self.lease is not None and self._renewer is None:
            self._renewer = threading.Thread(target=self._renew_leases, daemon=True,
                                             name=f"kairo-client-lease-{self.client_id}")
            self._renewer.start()
        return self

    def close(self) -> None:
        """Cancel the streams this connection still has (if it opened any), then disconnect."""
        self._closing.set()
        if self._replayed and self._client.is_connected():
            with contextlib.suppress(RuntimeError, ValueError):  # the connection went meanwhile
                self._publish("replay/cancel", {"owner": self._owner},
                              key="close").wait_for_publish(min(self.timeout, 5.0))
        self._client.disconnect()
        self._client.loop_stop()
        if self._renewer is not None:
            self._renewer.join(5.0)

    def __enter__(self) -> SidecarClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._failure = (f"cannot connect to the broker at {self.host}:{self.port}: "
                             f"{refusal_reason(reason.value)}")
            self._ready.set()
            return
        client.subscribe(self._reply_topic, qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._failure = f"the broker refused the subscription to {self._reply_topic}"
        self._ready.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        """The requests and streams of this connection are lost with it (the broker dropped
        their answers, the Will cancels the streams): fail them now rather than wait forever.
        The next connection gets a new owner, so this one's Will, however late, cannot cancel
        a stream opened after the reconnection."""
        self._owner = uuid.uuid4().hex
        self._set_will()
        lost = {"status": "error", "error": {
            "code": "disconnected", "message": "the connection to the broker was lost; "
            "a replay can be resumed with after=<its last seq>"}}
        with self._lock:
            inboxes = list(self._pending.values())
            self._streams.clear()
        for inbox in inboxes:
            inbox.put(lost)

    def _set_will(self) -> None:
        """The broker publishes the Will when this connection dies without a DISCONNECT."""
        body = {"owner": self._owner, "reply_to": self._reply_topic}
        self._client.will_set(f"{self.base_topic}/request/replay/cancel",
                              msgspec.json.encode(body), qos=1)

    def _renew_leases(self) -> None:
        """Renew the lease of every running stream every ``lease / 3`` seconds (two renewals
        may get lost before one expires)."""
        assert self.lease is not None
        while not self._closing.wait(self.lease / 3):
            with self._lock:
                streams = [s for s in self._streams.values() if s is not None]
            for stream in streams:
                with contextlib.suppress(RuntimeError, ValueError):
                    self._publish("replay/renew", {"stream": stream}, key="renew")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            body = _decode(msg.payload)
        except (msgspec.DecodeError, ValueError):
            return
        key: Any = None
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if self._v5 and correlation is not None:
            key = bytes(correlation).decode(errors="replace")
        elif isinstance(body, dict):
            key = body.get("transaction")
        with self._lock:
            target = self._pending.get(key) if isinstance(key, str) else None
            if target is not None and key in self._streams and isinstance(body, dict):
                if body.get("done") or body.get("status") == "error":
                    self._streams.pop(key, None)  # ended: no more renewals
                elif isinstance(body.get("stream"), str):
                    self._streams[key] = body["stream"]
        if target is not None and isinstance(body, dict):
            target.put(body)

    # ------------------------------------------------------------------ requests
    def _send(self, op: str, body: dict[str, Any], *,
              stream: bool = False) -> tuple[str, queue.Queue[dict[str, Any]]]:
        key = uuid.uuid4().hex
        inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._pending[key] = inbox
            if stream:
                self._streams[key] = None  # its id comes with the first message
        self._publish(op, body, key=key)
        return key, inbox

    def _publish(self, op: str, body: dict[str, Any], *, key: str) -> paho.MQTTMessageInfo:
        """Publish one request; its answer comes to this client's topic, matched by ``key``."""
        message = {k: v for k, v in body.items() if v is not None or k == "value"}
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self._reply_topic
            properties.CorrelationData = key.encode()
            properties.ContentType = _CONTENT_TYPES[self._encoding]
        else:
            message["reply_to"] = self._reply_topic
            message["transaction"] = key
        payload = (msgspec.msgpack.encode(message) if self._encoding == "msgpack"
                   else msgspec.json.encode(message))
        return self._client.publish(f"{self.base_topic}/request/{op}", payload, qos=1,
                                    properties=properties)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._streams.pop(key, None)

    def _stream_of(self, key: str) -> str | None:
        """The stream id of a running replay, as soon as its first message arrived."""
        with self._lock:
            return self._streams.get(key)

    def request(self, op: str, body: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Send one request and return the ``data`` of its answer."""
        key, inbox = self._send(op, body or {})
        try:
            answer = _take(inbox, self.timeout if timeout is None else timeout, op)
        finally:
            self._forget(key)
        return _data(answer)

    def query(self, *, limit: int | None = None, order: str | None = None,
              **filters: Any) -> Page:
        """One page of events matching ``filters`` (type, source, topic, since, until,
        correlation_id, causation_id, trace_id, after, where)."""
        data = self.request("query", {**filters, "limit": limit, "order": order})
        return Page(events=data["events"], next=data["next"],
                    unindexed_where=data.get("unindexed_where"))

    def query_all(self, *, limit: int | None = None, order: str | None = None,
                  **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching event, walking the ``next`` cursor page by page."""
        after = filters.pop("after", None)
        while True:
            page = self.query(limit=limit, order=order, after=after, **filters)
            yield from page.events
            if page.next is None:
                return
            after = page.next

    def search(self, query: str, *, limit: int | None = None, order: str | None = None,
               after: int | str | None = None, highlight: tuple[str, str] | None = None,
               **filters: Any) -> SearchPage:
        """One page of full-text matches for ``query`` (words, "phrases", prefix*, AND/OR/NOT,
        type:/source:/payload: in front of a term), best first (``order`` "rank") or by time
        ("desc", "asc"), among the events matching ``filters`` (those of ``query``);
        ``after``: the ``next`` of the previous page; ``highlight``: the marks around matched
        words in each snippet (default ``("[", "]")``)."""
        body = {**filters, "query": query, "limit": limit, "order": order, "after": after,
                "highlight": list(highlight) if highlight else None}
        data = self.request("search", body)
        return SearchPage(hits=data["hits"], next=data["next"], complete=data["complete"],
                          indexed_through=data["indexed_through"], live_from=data["live_from"],
                          rank_window=data.get("rank_window"))

    def search_all(self, query: str, *, limit: int | None = None, order: str | None = None,
                   **filters: Any) -> Iterator[dict[str, Any]]:
        """Every hit, walking the ``next`` cursor page by page."""
        after = filters.pop("after", None)
        while True:
            page = self.search(query, limit=limit, order=order, after=after, **filters)
            yield from page.hits
            if page.next is None:
                return
            after = page.next

    def latest(self, key: str, *, limit: int | None = None, after: Any = None,
               **filters: Any) -> LatestPage:
        """The newest event per distinct value of ``key`` (``payload.name``) among the events
        matching ``filters`` (type, source, where), in key order; ``after``: the ``next`` of
        the previous page."""
        data = self.request("latest", {**filters, "key": key, "limit": limit, "after": after})
        return LatestPage(events=data["events"], next=data["next"], indexed=data["indexed"])

    def latest_all(self, key: str, *, limit: int | None = None,
                   **filters: Any) -> Iterator[dict[str, Any]]:
        """Every key's newest event, walking the ``next`` cursor page by page."""
        after = filters.pop("after", None)
        while True:
            page = self.latest(key, limit=limit, after=after, **filters)
            yield from page.events
            if page.next is None:
                return
            after = page.next

    def get(self, event_id: str) -> dict[str, Any]:
        """The event with ``event_id``; ``RequestError`` with code ``not_found`` if none."""
        data: dict[str, Any] = self.request("get", {"id": event_id})
        return data

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.request("stats")
        return data

    def cancel(self, stream: str) -> dict[str, Any]:
        data: dict[str, Any] = self.request("replay/cancel", {"stream": stream})
        return data

    def replay(self, **options: Any) -> Replay:
        """Start a replay; iterate the returned ``Replay`` for the events (it ends at ``done``).
        Options: the filters of ``query`` plus batch, rate, pace, speed, live, max_duration.
        The stream carries this connection's owner token and the client's lease."""
        body = {"owner": self._owner, "lease": self.lease, **options}
        self._replayed = True
        key, inbox = self._send("replay", body, stream=True)
        paced = options.get("pace") == "original" or options.get("rate") is not None
        return Replay(self, key, inbox, idle_timeout=None if paced else self.timeout)


    # ------------------------------------------------------------------ key-value store
    def kv_get(self, key: str) -> dict[str, Any]:
        """``{key, value, version, updated_at}``; ``RequestError`` ``not_found`` if absent."""
        data: dict[str, Any] = self.request("kv/get", {"key": key})
        return data

    def kv_put(self, key: str, value: Any, *, if_version: int | None = None) -> int:
        """Store ``value`` (any JSON) under ``key``; the new version, once durable. With
        ``if_version`` (0: only if absent) a stale version raises ``RequestError`` ``conflict``."""
        body: dict[str, Any] = {"key": key, "value": value}
        if if_version is not None:
            body["if_version"] = if_version
        return int(self.request("kv/put", body)["version"])

    def kv_delete(self, key: str, *, if_version: int | None = None) -> int:
        """Delete ``key``; the version deleted (``not_found``, ``conflict`` as ``kv_put``)."""
        body: dict[str, Any] = {"key": key}
        if if_version is not None:
            body["if_version"] = if_version
        return int(self.request("kv/delete", body)["version"])

    def kv_list(self, prefix: str = "", *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Every entry whose key starts with ``prefix``, in key order, page after page."""
        after: str | None = None
        while True:
            body: dict[str, Any] = {"prefix": prefix}
            if limit is not None:
                body["limit"] = limit
            if after is not None:
                body["after"] = after
            page = self.request("kv/list", body)
            yield from page["entries"]
            after = page["next"]
            if after is None:
                return

    def kv_watch(self, prefix: str = "", **options: Any) -> KvWatch:
        """Watch the keys under ``prefix``: iterate the returned stream (see ``KvWatch``).
        Options: batch, max_duration; it carries this connection's owner token and lease."""
        body = {"owner": self._owner, "lease": self.lease, "prefix": prefix, **options}
        self._replayed = True
        key, inbox = self._send("kv/watch", body, stream=True)
        return KvWatch(self, key, inbox, idle_timeout=self.timeout)


class Replay:
    """The events of one replay stream, in sequence order.

    ``stream`` is the stream id (known from the first message on), ``caught_up`` is set when a
    live stream has sent every stored event, ``done`` holds the final message. A missing stream
    message (the broker dropped it) raises ``RequestError("lost", ...)``; resume with
    ``after=replay.last``.
    """

    _ITEMS: tuple[str, ...] = ("events",)  # the keys of a stream message that hold its items

    def __init__(self, client: SidecarClient, key: str, inbox: queue.Queue[dict[str, Any]], *,
                 idle_timeout: float | None) -> None:
        self._client = client
        self._key = key
        self._inbox = inbox
        self._idle_timeout = idle_timeout  # None: paced streams may be quiet for long
        self.stream: str | None = None
        self.caught_up = threading.Event()
        self.done: dict[str, Any] | None = None
        self.count = 0
        self.last: int | None = None
        self._messages = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for message in self.messages():
            yield from message.get("events", ())

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every stream message (events, ``caught_up``, ``done``) as it arrives."""
        try:
            while self.done is None:
                idle = None if self.caught_up.is_set() else self._idle_timeout
                message = _take(self._inbox, idle, "replay")
                if message.get("status") == "error":
                    self.done = message
                    _data(message)
                self.stream = message.get("stream", self.stream)
                items = next((k for k in self._ITEMS if k in message), None)
                if items is not None:
                    self._messages += 1
                    if message.get("seq") != self._messages:
                        raise RequestError("lost", f"stream message {self._messages} missing "
                                           f"(got {message.get('seq')}); resume with after="
                                           f"{self.last}")
                    self.count += len(message[items])
                    if items == "events" and message["events"]:
                        self.last = message["events"][-1]["seq"]
                elif message.get("caught_up"):
                    self.caught_up.set()
                elif message.get("done"):
                    self.done = message
                    if message.get("count") != self.count:
                        raise RequestError("lost", f"received {self.count} events, the stream "
                                           f"sent {message.get('count')}")
                yield message
        finally:
            stream = self.stream or self._client._stream_of(self._key)
            if self.done is None and stream is not None:
                with contextlib.suppress(RequestError, TimeoutError):
                    self._client.cancel(stream)
            self._client._forget(self._key)

    def cancel(self) -> None:
        """Ask the sidecar to end the stream; iteration then ends at its ``done``."""
        stream = self.stream or self._client._stream_of(self._key)
        if stream is None:
            raise RuntimeError("the stream id is not known yet (no message arrived)")
        self._client.cancel(stream)


class KvWatch(Replay):
    """A ``kv/watch`` stream: iterate for the current values (``{key, value, version,
    updated_at}``), then, after ``caught_up`` is set, the changes (the same with ``op``:
    ``put`` or ``delete``, ``value`` null for a delete) until cancelled or expired."""

    _ITEMS = ("entries", "changes")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for message in self.messages():
            yield from message.get("entries", ())
            yield from message.get("changes", ())


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: a request written right after a PUBACK would wait for a delayed ACK."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _decode(payload: bytes | bytearray) -> Any:
    first = payload[:1]
    if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return msgspec.msgpack.decode(payload)
    return msgspec.json.decode(payload)


def _take(inbox: queue.Queue[dict[str, Any]], timeout: float | None, op: str) -> dict[str, Any]:
    try:
        return inbox.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no answer to {op!r} within {timeout}s (is the sidecar running, "
                           "with this base topic?)") from None


def _data(answer: dict[str, Any]) -> Any:
    if answer.get("status") == "error":
        err = answer.get("error") or {}
        raise RequestError(str(err.get("code", "error")), str(err.get("message", "")),
                           field=err.get("field"))
    return answer.get("data")
