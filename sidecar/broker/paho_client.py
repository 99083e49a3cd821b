"""paho's ``Client`` with a faster receive path and batched acks (``broker.subscriber``'s client
unless ``[mqtt] fast_client = false``).

Profiles of the daemon draining a backlog (BENCHMARKS.md) showed the paho network thread as the
bottleneck, and most of its time in paho's own per-packet work:

* paho reads each packet with three or four ``recv`` calls (the command byte, the length bytes
  one at a time, then the body) and goes back to ``select`` after every packet. Here the socket
  is wrapped in ``_BufferedSocket``: one ``recv`` of up to 64 KiB fills a buffer (kept whole,
  with a read position) the small reads are served from, and ``loop_read`` handles every packet
  already in that buffer before paho's loop goes back to ``select`` (its ``pending()``, which
  paho already asks of TLS sockets, tells paho not to wait there while bytes are buffered).
* paho decodes every PUBLISH into an ``MQTTMessage`` with an MQTT 5 ``Properties`` object
  (validated attribute by attribute), formats a debug log call and walks its topic matcher:
  ~40 % of the daemon's CPU in a drain. With ``on_lean_message`` set (the subscriber sets it) and
  ``manual_ack`` on, ``loop_read`` parses each complete QoS 0/1 PUBLISH at the buffer's read
  position with ``broker.publish.parse_publish`` (topic, packet id, flags, payload and the four
  MQTT 5 properties the sidecar reads) and calls ``on_lean_message(Publish)`` under the mutex
  paho holds around ``on_message``. Everything else (QoS 2, other packet types, a packet cut at
  the end of a read, anything unusual ``parse_publish`` declines) is read by paho's own
  ``_packet_read`` from the same buffer and reaches ``on_message`` as before. The socket's
  answer other than bytes (end of stream, would-block, an error) is kept by ``fill`` and raised
  by the next ``recv``, so paho's error handling meets it unchanged.
* ``ack(mid)`` queues one packet and writes a byte to paho's wake-up socket per message.
  ``ack_many`` queues the PUBACKs of a whole batch as one write: one wake-up and one ``send``.
  The bytes are the ones ``ack`` would send, in the same order.

These rely on paho internals: ``_create_socket`` (called by ``reconnect``), ``_sock``,
``_transport``, ``_packet_queue(command, packet, mid, qos)``, paho's loop asking the socket for
``pending()``, and for the lean path ``_in_packet["command"]`` (0 between packets),
``_manual_ack``, ``_protocol``, ``_in_callback_mutex``, ``_msgtime_mutex`` /
``_last_bytes_received`` (keep-alive) and ``time_func``. ``pyproject.toml`` pins paho-mqtt below
2.3; ``tests/unit/broker/test_paho_client.py`` checks each of them against the installed paho
(naming any that went missing) and runs the client against a real broker, and
``tests/unit/broker/test_publish.py`` checks the parser against paho's ``decode_publish``.
Should a paho release break them, ``[mqtt] fast_client = false`` runs on paho's own ``Client``
until this module is fixed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as paho

from sidecar.broker.publish import Publish, parse_publish

_PUBACK = 0x40
_READ_SIZE = 65536
_MAX_BUFFERED_PACKETS = 1000  # packets read per loop turn from the buffer at most


class _BufferedSocket:
    """A socket whose small ``recv`` calls are served from one large read.

    The buffer is kept whole with a read position (``_buf``, ``_pos``), so serving a packet
    copies only that packet, and ``Client`` parses PUBLISH packets from it in place.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._deferred: BaseException | bytes | None = None  # what fill() got instead of bytes

    def fill(self) -> None:
        """One read into the empty buffer. What the socket answers instead of bytes (end of
        stream, would-block, TLS want-read, an error) is kept for the next ``recv``, so paho's
        ``_packet_read`` meets it exactly as it would have."""
        try:
            data = self._sock.recv(_READ_SIZE)
        except Exception as exc:  # handed to paho's recv, unchanged
            self._deferred = exc
            return
        if data:
            self._buf = data
            self._pos = 0
        else:
            self._deferred = data

    def recv(self, bufsize: int) -> bytes:
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            deferred = self._deferred
            if deferred is not None:
                self._deferred = None
                if isinstance(deferred, BaseException):
                    raise deferred
                return deferred
            buf = self._sock.recv(max(bufsize, _READ_SIZE))  # may raise BlockingIOError
            if len(buf) <= bufsize:
                self._buf = b""
                self._pos = 0
                return buf  # b"" is end of stream
            self._buf = buf
            pos = 0
        end = min(pos + bufsize, len(buf))
        self._pos = end
        return buf[pos:end]

    @property
    def buffered(self) -> bool:
        """Bytes (or what ``fill`` got instead) wait to be read."""
        return self._pos < len(self._buf) or self._deferred is not None

    def pending(self) -> int:
        """Bytes readable without waiting: ours, plus what TLS has decrypted already."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def send(self, data: bytes | bytearray) -> int:
        return int(self._sock.send(data))

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def close(self) -> None:
        self._buf = b""
        self._pos = 0
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

    # Set by the subscriber: receives each QoS 0/1 PUBLISH the lean path parsed, in place of
    # ``on_message`` (which still gets every packet the lean path leaves to paho). Only used
    # with ``manual_ack`` (paho's automatic PUBACK is not reproduced here).
    on_lean_message: Callable[[Publish], None] | None = None

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        """Read one packet (paho), then every further one already in the buffer, before paho's
        loop goes back to ``select`` (bounded, so acks and keep-alives still go out). Complete
        QoS 0/1 PUBLISH packets in the buffer go through ``parse_publish`` to
        ``on_lean_message``; anything else through paho's ``_packet_read``."""
        lean = self.on_lean_message if self._manual_ack else None
        if not isinstance(self._sock, _BufferedSocket) or lean is None:
            return self._loop_read_buffered(max_packets)
        sock: _BufferedSocket = self._sock
        budget = _MAX_BUFFERED_PACKETS
        filled = False
        rc = paho.MQTT_ERR_SUCCESS
        while budget > 0 and rc == paho.MQTT_ERR_SUCCESS and self._sock is sock:
            if not sock.buffered:
                if filled:
                    break  # one read per wake-up from select (paho's own may read more)
                sock.fill()
                filled = True
            if self._in_packet["command"] == 0:  # no packet half read by paho
                handled = self._read_lean(sock, lean, budget)
                if handled:
                    budget -= handled
                    continue
            rc = super().loop_read(1)  # the packet at the read position is for paho
            budget -= 1
        return rc

    def _loop_read_buffered(self, max_packets: int) -> paho.MQTTErrorCode:
        """paho reads every packet, but from the buffer while it holds bytes."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(_MAX_BUFFERED_PACKETS):
            if rc != paho.MQTT_ERR_SUCCESS or self._sock is not sock:
                break
            if not isinstance(sock, _BufferedSocket) or not sock.buffered:
                break
            rc = super().loop_read(1)
        return rc

    def _read_lean(self, sock: _BufferedSocket, deliver: Callable[[Publish], None],
                   budget: int) -> int:
        """Hand over the PUBLISH packets at the buffer's read position (at most ``budget``);
        stop at the first packet paho must take. Returns how many were handed over."""
        buf = sock._buf
        v5 = self._protocol == paho.MQTTv5
        mutex = self._in_callback_mutex
        handled = 0
        while handled < budget and sock._buf is buf and sock._pos < len(buf):
            parsed = parse_publish(buf, sock._pos, v5)
            if parsed is None:
                break
            message, sock._pos = parsed  # consumed before the callback, as paho does
            handled += 1
            with mutex:  # what paho holds around on_message
                deliver(message)
        if handled:
            with self._msgtime_mutex:  # keep-alive: bytes came in (paho's _packet_read does it)
                self._last_bytes_received = paho.time_func()
        return handled

    def ack_many(self, mids: Iterable[int]) -> None:
        """PUBACK these QoS 1 packet ids (in this order) in one write."""
        packet = b"".join([struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids])
        if packet:
            self._packet_queue(_PUBACK, packet, 0, 0)


__all__ = ["Client"]
