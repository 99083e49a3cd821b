"""paho's ``Client`` with a faster receive path and batched acks (``broker.subscriber``'s client
unless ``[mqtt] fast_client = false``).

Profiles of the daemon draining a backlog (BENCHMARKS.md) showed the paho network thread and
the writer thread taking turns on the GIL for every system call:

* paho reads each packet with three or four ``recv`` calls (the command byte, the length bytes
  one at a time, then the body) and goes back to ``select`` after every packet. Here the socket
  is wrapped in ``_BufferedSocket``: one ``recv`` of up to 64 KiB fills a buffer the small reads
  are served from, and ``loop_read`` handles every packet already in that buffer before paho's
  loop goes back to ``select`` (its ``pending()``, which paho already asks of TLS sockets, tells
  paho not to wait there while bytes are buffered).
* ``ack(mid)`` queues one packet and writes a byte to paho's wake-up socket per message.
  ``ack_many`` queues the PUBACKs of a whole batch as one write: one wake-up and one ``send``.
  The bytes are the ones ``ack`` would send, in the same order.

Both rely on paho internals: ``_create_socket`` (called by ``reconnect``), ``_sock``,
``_transport``, ``_packet_queue(command, packet, mid, qos)``, and paho's loop asking the socket
for ``pending()``. ``pyproject.toml`` pins paho-mqtt below 2.3; ``tests/test_paho_client.py``
checks each of them against the installed paho (naming any that went missing) and runs the
client against a real broker. Should a paho release break them, ``[mqtt] fast_client = false``
runs on paho's own ``Client`` until this module is fixed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho

_PUBACK = 0x40
_READ_SIZE = 65536
_MAX_BUFFERED_PACKETS = 1000  # packets read per loop turn from the buffer at most


class _BufferedSocket:
    """A socket whose small ``recv`` calls are served from one large read."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""

    def recv(self, bufsize: int) -> bytes:
        buffer = self._buffer
        if not buffer:
            buffer = self._sock.recv(max(bufsize, _READ_SIZE))  # may raise BlockingIOError
            if len(buffer) <= bufsize:
                return buffer  # b"" is end of stream
        self._buffer = buffer[bufsize:]
        return buffer[:bufsize]

    @property
    def buffered(self) -> bool:
        return bool(self._buffer)

    def pending(self) -> int:
        """Bytes readable without waiting: ours, plus what TLS has decrypted already."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        return int(self._sock.send(data))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def close(self) -> None:
        self._buffer = b""
        self._sock.close()

    def __getattr__(self, name: str) -> Any:  # setsockopt, getpeercert, ... of the real socket
        return getattr(self._sock, name)


class Client(paho.Client):
    """``paho.mqtt.client.Client`` with buffered reads, ``ack_many``, and the exception of
    the last failed connection attempt (``last_connect_error``; paho's ``on_connect_fail``
    does not say why)."""

    last_connect_error: BaseException | None = None

    def reconnect(self) -> paho.MQTTErrorCode:
        try:
            rc = super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        return rc

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if getattr(self, "_transport", "tcp") != "tcp":
            return sock  # websockets: paho's own wrapper buffers frames
        return _BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        """Read one packet (paho), then every further one already in the buffer, before paho's
        loop goes back to ``select`` (bounded, so acks and keep-alives still go out)."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(_MAX_BUFFERED_PACKETS):
            if rc != paho.MQTT_ERR_SUCCESS or self._sock is not sock:
                break
            if not isinstance(sock, _BufferedSocket) or not sock.buffered:
                break
            rc = super().loop_read(1)
        return rc

    def ack_many(self, mids: Iterable[int]) -> None:
        """PUBACK these QoS 1 packet ids (in this order) in one write."""
        packet = b"".join([struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids])
        if packet:
            self._packet_queue(_PUBACK, packet, 0, 0)


__all__ = ["Client"]
