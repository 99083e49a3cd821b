"""A loopback TCP proxy that can cut the network: the sidecar connects to the proxy, the proxy to
the broker. ``cut()`` stops every byte in both directions without closing anything (packets
dropped on a dead link: neither end sees a FIN or RST, only silence); connections opened during
the cut are held without reaching the broker. ``restore()`` resets every connection that lived
through the cut (the link came back, the old TCP state is gone) and forwards new ones again.

Only ever listens on and connects to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.broker import LOCALHOST


class _Pair:
    """One client connection and, while the link is up, its connection to the broker."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close with a reset, as a peer that lost its state would answer.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                sock.close()


class NetworkProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` until ``cut()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOCALHOST, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.host = LOCALHOST
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._thread = threading.Thread(target=self._accept, name="netproxy", daemon=True)

    # ------------------------------------------------------------------ control
    def start(self) -> NetworkProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        """Stop forwarding: silence in both directions, nothing closed."""
        self._up.clear()

    def restore(self) -> None:
        """Reset every connection that saw the cut, then forward new connections again."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self._up.set()
        self._thread.join(5)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> NetworkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ threads
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            pair = _Pair(client)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._open, args=(pair,), name="netproxy-conn",
                             daemon=True).start()

    def _open(self, pair: _Pair) -> None:
        """Connect upstream once the link is up (a connection made during a cut waits, and is
        reset by ``restore()``), then pump both directions."""
        while not self._up.wait(0.2):
            if pair.closed.is_set() or self._stop.is_set():
                return
        if pair.closed.is_set():
            return
        try:
            pair.upstream = socket.create_connection((LOCALHOST, self.target_port), timeout=5)
        except OSError:
            pair.close()
            return
        pair.upstream.settimeout(None)
        for src, dst in ((pair.client, pair.upstream), (pair.upstream, pair.client)):
            threading.Thread(target=self._pump, args=(pair, src, dst), name="netproxy-pump",
                             daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not pair.closed.is_set():
                # During a cut nothing is read: the bytes wait in the kernel, as on a dead link.
                if not self._up.wait(0.2):
                    continue
                if pair.closed.is_set():
                    return
                src.settimeout(0.2)
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if not self._up.is_set():  # cut while reading: drop what was in transit
                    continue
                dst.sendall(data)
        except OSError:
            pass
        pair.close()
