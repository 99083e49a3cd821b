"""A fast QoS 1 (or QoS 0) publisher of known events for the fault-injection tests.

One paho client for the publisher's lifetime: paho keeps every QoS 1 message that has no PUBACK
yet and re-sends it (DUP) after an automatic reconnect, so a broker restart loses nothing that
the test counts as *accepted*. An event is accepted only when its PUBACK arrived; a re-sent copy
of an accepted event is harmless because the sidecar stores events by id.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

_client_ids = itertools.count()


def event_id(i: int, prefix: str = "evt") -> str:
    return f"{prefix}-{i:06d}"


def make_event(i: int, *, prefix: str = "evt") -> dict[str, Any]:
    """A Kairo envelope with a known id and a ~150 byte payload."""
    return {
        "id": event_id(i, prefix),
        "type": "kairo.test.event",
        "source": "test",
        "payload": {"i": i, "filler": "x" * 120, "n": i * 7},
        "metadata": {"timestamp": int(time.time() * 1000), "correlationId": f"corr-{i % 97}"},
    }


def encode(event: Any) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def topic_for(i: int) -> str:
    return f"kairo/test/{i % 10}"


@dataclass(frozen=True)
class Message:
    """One message to publish; ``key`` is what the test tracks (the event id, or any label)."""

    key: str
    topic: str
    payload: bytes
    qos: int = 1


def event_messages(n: int, *, start: int = 0, prefix: str = "evt") -> list[Message]:
    return [Message(event_id(i, prefix), topic_for(i), encode(make_event(i, prefix=prefix)))
            for i in range(start, start + n)]


class Publisher:
    """QoS 1 publisher that survives broker restarts (paho reconnects and re-sends)."""

    def __init__(self, host: str, port: int, *, protocol: str = "5", max_inflight: int = 100,
                 client_id: str | None = None) -> None:
        v5 = protocol == "5"
        self.client_id = client_id or f"kairo-test-pub-{uuid.uuid4().hex[:8]}-{next(_client_ids)}"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)  # unlimited: nothing is ever refused
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._host, self._port = host, port
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self._lock = threading.Lock()
        self._mid_key: dict[int, str] = {}  # mid -> key, for QoS 1 messages (main thread)
        self._acked_mids: set[int] = set()  # filled by the network thread
        self._failed: list[tuple[int, str]] = []
        self.sent: list[str] = []  # keys handed to paho, in order
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            self.connects += 1
            self.connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.disconnects += 1
        self.connected.clear()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        # Called with paho's out-message lock held: touch only our own containers, no lock.
        if getattr(reason, "is_failure", False):
            self._failed.append((mid, str(reason)))
        else:
            self._acked_mids.add(mid)

    # ------------------------------------------------------------------ lifecycle
    def connect(self, timeout: float = 10.0) -> Publisher:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self.connected.wait(timeout):
            raise AssertionError(f"publisher did not connect to {self._host}:{self._port}")
        return self

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self) -> Publisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ publishing
    def publish(self, messages: Iterable[Message], *, rate: float | None = None,
                max_pending: int = 2000) -> None:
        """Hand ``messages`` to paho (it sends ``max_inflight`` at a time). ``rate`` (msg/s)
        spreads the stream out; ``max_pending`` bounds what waits in paho's queue."""
        started = time.monotonic()
        for n, msg in enumerate(messages):
            if rate:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            while msg.qos and self.pending > max_pending:
                time.sleep(0.005)
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos)
            if msg.qos:
                with self._lock:
                    if info.mid in self._mid_key:  # paho wraps mids at 65535
                        raise RuntimeError("more than 65535 QoS 1 messages for one Publisher")
                    self._mid_key[info.mid] = msg.key
            self.sent.append(msg.key)

    def publish_in_background(self, messages: Sequence[Message], **kwargs: Any) -> threading.Thread:
        def run() -> None:
            try:
                self.publish(messages, **kwargs)
            except BaseException as exc:  # reported by wait_all / join
                self.error = exc

        self._thread = threading.Thread(target=run, name="test-publisher", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float = 60.0) -> None:
        """Wait for the background publishing thread to hand everything to paho."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"publisher thread still running after {timeout}s")
        if self.error is not None:
            raise AssertionError(f"publisher failed: {self.error!r}") from self.error

    @property
    def accepted(self) -> set[str]:
        """Keys whose PUBACK arrived."""
        acked = set(self._acked_mids)
        with self._lock:
            return {self._mid_key[m] for m in acked if m in self._mid_key}

    @property
    def accepted_count(self) -> int:
        return len(self._acked_mids)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._mid_key) - len(self._acked_mids)

    def wait_all(self, timeout: float = 60.0) -> set[str]:
        """Wait for the background thread (if any) and for every PUBACK; return the keys."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                raise AssertionError("publisher thread still running at the deadline")
        if self.error is not None:
            raise AssertionError(f"publisher failed: {self.error!r}") from self.error
        while True:
            if self._failed:
                raise AssertionError(f"broker refused publishes: {self._failed[:5]}")
            with self._lock:
                missing = len(self._mid_key) - len(self._acked_mids & self._mid_key.keys())
            if missing == 0:
                return self.accepted
            if time.monotonic() > deadline:
                raise AssertionError(f"{missing} publishes without PUBACK after {timeout}s "
                                     f"(connects={self.connects}, disconnects={self.disconnects})")
            time.sleep(0.02)


def publish_all(host: str, port: int, messages: Sequence[Message], *, protocol: str = "5",
                rate: float | None = None, timeout: float = 60.0) -> set[str]:
    """Connect, publish ``messages``, wait for every PUBACK, disconnect; return accepted keys."""
    with Publisher(host, port, protocol=protocol) as pub:
        pub.publish(messages, rate=rate)
        return pub.wait_all(timeout)
