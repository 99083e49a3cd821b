"""A fast raw-socket MQTT 3.1.1 QoS 1 publisher, so the publisher is never the bottleneck.

PUBLISH packets are encoded once up front; a burst goes out in 64 KiB ``sendall`` writes with at
most ``window`` messages lacking a PUBACK, and a reader thread counts the PUBACKs. A publish is
"accepted" when its PUBACK arrived: the broker has it (and has queued it for every subscribed
session). ``paced`` sends at a fixed rate, recording the send time (``time.monotonic_ns``, the
same clock in every process on Linux) of each message, for the latency scenario. Only loopback
addresses are accepted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
import uuid
from collections.abc import Sequence

from .events import Message


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    body = _string(topic) + struct.pack("!H", mid) + payload
    return b"\x32" + _varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int = 600) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + _string(client_id)
    return b"\x10" + _varint(len(body)) + body


def _loopback(host: str) -> None:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to publish to {host}: loopback only")


class RawPublisher:
    """One MQTT 3.1.1 connection publishing pre-encoded QoS 1 messages."""

    def __init__(self, host: str, port: int, *, window: int = 10_000) -> None:
        _loopback(host)
        if not 1 <= window <= 60_000:
            raise ValueError("window must be 1..60000 (packet ids wrap at 65535)")
        self.window = window
        self._sock = socket.create_connection((host, port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(f"bench-pub-{uuid.uuid4().hex[:10]}"))
        connack = self._recv_exact(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the connection: {connack!r}")
        self.acked = 0
        self.sent = 0
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read_acks, name="bench-puback", daemon=True)
        self._reader.start()

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _read_acks(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
                whole = len(buf) // 4 * 4  # PUBACK: 0x40 0x02 mid mid
                if whole:
                    count = whole // 4
                    buf = buf[whole:]
                    with self._cond:
                        self.acked += count
                        self._cond.notify_all()
        except OSError:
            return
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _wait_window(self, sent: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sent - self.acked > self.window:
                if self._closed:
                    raise ConnectionError("broker closed the connection")
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no PUBACK for {timeout}s ({self.acked}/{sent})")

    def packets(self, messages: Sequence[Message]) -> list[bytes]:
        """Encode once (packet ids 1..65535 in turn)."""
        first = self.sent
        return [publish_packet(m.topic, m.payload, (first + k) % 65535 + 1)
                for k, m in enumerate(messages)]

    def burst(self, packets: Sequence[bytes], *, timeout: float = 300.0) -> float:
        """Send every packet as fast as the broker takes them; return the seconds until the
        last PUBACK."""
        started = time.perf_counter()
        step = max(1, 65536 // max(1, len(packets[0]) if packets else 1))
        step = min(step, self.window)
        base = self.sent
        for i in range(0, len(packets), step):
            chunk = packets[i:i + step]
            self._wait_window(base + i + len(chunk), timeout)
            self._sock.sendall(b"".join(chunk))
            self.sent += len(chunk)
        self.wait_acked(timeout)
        return time.perf_counter() - started

    def paced(self, packets: Sequence[bytes], rate: float, *, tick: float = 0.002,
              timeout: float = 300.0) -> list[int]:
        """Send at ``rate`` messages/s (checked every ``tick`` s); return each send time
        (``monotonic_ns``)."""
        sent_at = [0] * len(packets)
        started = time.monotonic()
        i = 0
        n = len(packets)
        while i < n:
            due = min(n, int((time.monotonic() - started) * rate) + 1)
            if due > i:
                now = time.monotonic_ns()
                self._sock.sendall(b"".join(packets[i:due]))
                for k in range(i, due):
                    sent_at[k] = now
                self.sent += due - i
                i = due
            time.sleep(tick)
        self.wait_acked(timeout)
        return sent_at

    def wait_acked(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.sent:
                if self._closed:
                    raise ConnectionError("broker closed the connection")
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{self.sent - self.acked} publishes without PUBACK")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
        self._sock.close()
        self._reader.join(5)

    def __enter__(self) -> RawPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
