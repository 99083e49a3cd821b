"""sd_notify messages and the watchdog: unit tests on sockets the tests create, the daemon as a
process under a fake systemd socket, and a stuck writer that must stop the pings."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from sidecar.config import load_config, systemd_environment
from sidecar.storage.maintenance import wal_size
from sidecar.systemd import Notifier, Watchdog, socket_address, stall_after
from tests.conftest import wait_until
from tests.support.broker import Broker
from tests.support.publisher import event_messages, publish_all


class FakeSystemd:
    """A datagram socket standing in for systemd's notify socket; collects every message."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(address))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        with self._lock:
            return [text for _, text in self.messages]

    def index_of(self, needle: str, start: int = 0) -> int | None:
        texts = self.texts()
        for i in range(start, len(texts)):
            if needle in texts[i].split("\n") or texts[i].startswith(needle):
                return i
        return None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@kairo-test-notify-{uuid.uuid4().hex}")
    try:
        yield fake
    finally:
        fake.close()


# ------------------------------------------------------------------------------ the protocol
def test_notifier_sends_to_a_file_system_socket(tmp_path: Path) -> None:
    """A path in $NOTIFY_SOCKET gets one datagram per message, fields newline-separated."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        notifier = Notifier(str(path))
        assert notifier.ready("storing kairo/#")
        assert sock.recv(4096) == b"READY=1\nSTATUS=storing kairo/#"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        notifier.close()


def test_notifier_sends_to_an_abstract_socket() -> None:
    """A leading '@' in $NOTIFY_SOCKET names a socket in the abstract namespace."""
    name = f"@kairo-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(5)
        notifier = Notifier(name)
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_notifier_without_systemd_is_a_no_op() -> None:
    """Without $NOTIFY_SOCKET nothing is sent and nothing fails."""
    notifier = Notifier(None)
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    """A socket that is gone makes send() return False instead of raising."""
    assert not Notifier(str(tmp_path / "missing.sock")).watchdog()


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, (None, None)),
    ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"},
     ("/run/systemd/notify", 30.0)),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())},
     ("@x", 30.0)),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, ("@x", None)),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "junk"}, ("@x", None)),
])
def test_systemd_environment(environ: dict[str, str], expected: tuple[object, object]) -> None:
    """NOTIFY_SOCKET and WATCHDOG_USEC are read like sd_watchdog_enabled (WATCHDOG_PID must match)."""
    assert tuple(systemd_environment(environ)) == expected


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []
        self.enabled = True

    def watchdog(self) -> bool:
        self.sent.append(("WATCHDOG=1",))
        return True

    def status(self, text: str) -> bool:
        self.sent.append((f"STATUS={text}",))
        return True


def test_watchdog_pings_at_half_the_period_only_while_healthy() -> None:
    """Pings every watchdog_sec/2 while healthy; none while unhealthy; resumes after."""
    recorder = Recorder()
    healthy = {"ok": True}
    dog = Watchdog(recorder, 10.0, lambda now: None if healthy["ok"] else "writer stalled")
    for now in (0.0, 1.0, 4.9, 5.0, 9.0, 10.0):
        dog.tick(now)
    assert recorder.sent == [("WATCHDOG=1",)] * 3  # at 0, 5 and 10
    recorder.sent.clear()
    healthy["ok"] = False
    for now in (15.0, 20.0, 25.0, 30.0):
        dog.tick(now)
    assert recorder.sent == [("STATUS=unhealthy: writer stalled",)]
    healthy["ok"] = True
    dog.tick(31.0)
    assert recorder.sent[1:] == [("STATUS=healthy again",), ("WATCHDOG=1",)]


def test_stall_limit_covers_every_legitimate_wait() -> None:
    """The stall limit exceeds flush interval + busy timeout + retry back-off, and stays well
    under the shipped unit's WatchdogSec=30s so systemd acts within one period after it."""
    limit = stall_after(flush_interval=1.0, busy_timeout=5.0, retry_max_delay=5.0, watchdog_sec=30.0)
    assert 11.0 < limit <= 30.0


# ------------------------------------------------------------------------------ the daemon
def test_daemon_sends_ready_watchdog_and_stopping(broker: Broker, sidecar_factory,
                                                  fake_systemd: FakeSystemd) -> None:
    """Under a notify socket the daemon sends READY=1 once subscribed, WATCHDOG=1 regularly,
    STOPPING=1 at SIGTERM, exits 0 and leaves the WAL truncated."""
    sidecar = sidecar_factory(broker, writer__flush_interval="0.05")
    sidecar.env.update({"NOTIFY_SOCKET": fake_systemd.address, "WATCHDOG_USEC": "1000000"})
    sidecar.start()
    wait_until(lambda: fake_systemd.index_of("READY=1") is not None, message="READY=1")
    ready = fake_systemd.index_of("READY=1")
    assert ready is not None
    assert "mqtt_subscribed" in sidecar.log_text()
    publish_all(broker.host, broker.port, event_messages(20))

    def pings_after_ready() -> int:
        return sum(t == "WATCHDOG=1" for t in fake_systemd.texts()[ready:])

    wait_until(lambda: pings_after_ready() >= 3, message="three WATCHDOG=1 after READY=1")
    assert sidecar.terminate() == 0
    wait_until(lambda: fake_systemd.index_of("STOPPING=1") is not None, message="STOPPING=1")
    stopping = fake_systemd.index_of("STOPPING=1")
    assert stopping is not None and stopping > ready
    assert wal_size(sidecar.db_path) == 0  # clean stop: TRUNCATE checkpoint


def test_stuck_writer_stops_the_watchdog_pings(tmp_path: Path, broker: Broker,
                                               fake_systemd: FakeSystemd) -> None:
    """A writer blocked inside a write stops WATCHDOG=1 (and says why in STATUS); pings come
    back once it moves again."""
    config = load_config(environ={
        "KAIRO_SIDECAR_MQTT__HOST": broker.host, "KAIRO_SIDECAR_MQTT__PORT": str(broker.port),
        "KAIRO_SIDECAR_MQTT__CLIENT_ID": f"kairo-test-stuck-{uuid.uuid4().hex[:8]}",
        "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{tmp_path / 'kairo.db'}",
        "KAIRO_SIDECAR_DATABASE__BUSY_TIMEOUT_MS": "50",
        "KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": "0.05",
        "KAIRO_SIDECAR_WRITER__RETRY_MAX_DELAY": "0.2",
    })
    sidecar = Sidecar(config, notifier=Notifier(fake_systemd.address), watchdog_sec=1.0)
    ready = threading.Event()
    thread = threading.Thread(target=sidecar.run, daemon=True,
                              kwargs={"install_signals": False, "on_ready": ready.set})
    thread.start()
    try:
        assert ready.wait(15)
        wait_until(lambda: "WATCHDOG=1" in fake_systemd.texts(), message="a first ping")
        writer = sidecar.writer
        assert writer is not None
        release = threading.Event()
        blocked = threading.Event()
        real_write = writer._write

        def stuck_write(batch: list) -> None:
            blocked.set()
            release.wait(60)
            return real_write(batch)

        writer._write = stuck_write
        _publish_one(broker)
        assert blocked.wait(10)
        wait_until(lambda: fake_systemd.index_of("STATUS=unhealthy") is not None, timeout=15,
                   message="the watchdog to notice the stall")
        stalled_at = time.monotonic()
        # Hold the stall for several ping periods (0.5 s each): pings would be due meanwhile.
        wait_until(lambda: time.monotonic() - stalled_at > 2.0, timeout=5, message="2 s of stall")
        release.set()
        wait_until(lambda: fake_systemd.index_of("STATUS=healthy again") is not None, timeout=15,
                   message="the watchdog to resume")
        begin = fake_systemd.index_of("STATUS=unhealthy")
        end = fake_systemd.index_of("STATUS=healthy again")
        assert begin is not None and end is not None
        assert "WATCHDOG=1" not in fake_systemd.texts()[begin:end]
        wait_until(lambda: "WATCHDOG=1" in fake_systemd.texts()[end:], message="pings again")
    finally:
        sidecar.request_stop()
        thread.join(30)


def _publish_one(broker: Broker) -> None:
    """Publish one QoS 1 event without waiting for the sidecar (the broker acks it)."""
    publish_all(broker.host, broker.port, event_messages(1, prefix="stuck"), timeout=10)


def test_the_stop_signal_handler_waits_for_no_lock() -> None:
    """SIGTERM's handler only records the signal, even while the stop Event's lock is held:
    the main thread holds it inside ``Event.wait``, where a handler may run, and a handler
    that waited for it (``Event.set``) hung the daemon at SIGTERM forever."""
    import signal

    sidecar = Sidecar(load_config(None, environ={}))
    returned = threading.Event()
    with sidecar._stop._cond:  # what the main loop's ``_stop.wait(0.2)`` holds at moments
        handler = threading.Thread(target=lambda: (
            sidecar._signal(signal.SIGTERM, None), returned.set()), daemon=True)
        handler.start()
        assert returned.wait(2), "the handler waited for the stop Event's lock"
    assert sidecar._signalled == signal.SIGTERM
