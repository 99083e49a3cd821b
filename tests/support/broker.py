"""MQTT broker for the test-suite: a local mosquitto, a docker container or an external broker.

Chosen by ``KAIRO_TEST_BROKER``:

* unset / ``local`` -- spawn ``/usr/sbin/mosquitto`` on a free loopback port;
* ``docker`` -- run ``eclipse-mosquitto:2.0`` through testcontainers;
* ``external:HOST:PORT`` -- use an already running broker on a loopback address
  (restarts are not possible there and raise ``NotImplementedError``).

This module has no pytest fixtures; ``tests/conftest.py`` wraps :func:`start_broker`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

ENV_VAR = "KAIRO_TEST_BROKER"
LOCALHOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_BYTES = 4000
_ADDR_IN_USE = "Address already in use"

# MQTT 3.1.1 CONNECT: protocol "MQTT", level 4, clean session, keep-alive 60 s, empty client id.
_PROBE_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 0])
_PROBE_DISCONNECT = bytes([0xE0, 0])
_CONNACK = 0x20


# --------------------------------------------------------------------------- helpers


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Poll until ``host:port`` accepts TCP connections; False after ``timeout`` seconds."""
    return _poll(lambda: _tcp_connects(host, port), timeout)


def mqtt_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if ``host:port`` answers an MQTT CONNECT with a CONNACK (any return code)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_PROBE_CONNECT)
            reply = sock.recv(4)
            if reply[:1] == bytes([_CONNACK]):
                sock.sendall(_PROBE_DISCONNECT)
                return True
    except OSError:
        pass
    return False


def _tcp_connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _poll(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)


def _find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto binary not found: apt-get install mosquitto")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_from(path: Path, offset: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def mosquitto_conf(
    *,
    listener: str,
    persistence_dir: str | None,
    log_dest: str,
    run_as_root: bool = False,
    extra_conf: str = "",
) -> str:
    """Render a mosquitto.conf for the tests."""
    lines = [
        f"listener {listener}",
        "allow_anonymous true",
        *(["user root"] if run_as_root else []),
        f"log_dest {log_dest}",
        *(f"log_type {kind}" for kind in ("error", "warning", "notice", "information")),
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "max_queued_messages 1000000",
        "max_inflight_messages 20",
        "persistent_client_expiration 1d",
    ]
    if persistence_dir is not None:
        lines += [
            "persistence true",
            f"persistence_location {persistence_dir.rstrip('/')}/",
            "autosave_interval 1",
        ]
    return "\n".join(lines) + "\n" + (extra_conf.rstrip("\n") + "\n" if extra_conf else "")


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class _LocalBackend:
    """A ``mosquitto -c conf`` child process; stdout/stderr go to the same log file."""

    binary: str
    conf_path: Path
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    _log_fh: IO[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            offset = _file_size(self.log_path)
            self._spawn()
            if self._wait_ready(deadline):
                return
            new_log = _read_from(self.log_path, offset)
            self._reap()
            # The port may still be held (TIME_WAIT, a dying predecessor): retry until the deadline.
            if _ADDR_IN_USE not in new_log or time.monotonic() >= deadline:
                raise RuntimeError(self._failure_message(new_log))
            time.sleep(0.2)

    def stop(self) -> None:
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_and_wait(signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _spawn(self) -> None:
        if self._log_fh is None:
            self._log_fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=self._log_fh,
        )

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if mqtt_ready(LOCALHOST, self.port) and self.proc.poll() is None:
                return True
            time.sleep(_POLL_INTERVAL)
        return False

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        self.proc = None

    def _reap(self) -> None:
        self._signal_and_wait(signal.SIGKILL)

    def _failure_message(self, new_log: str) -> str:
        tail = (new_log or _read_from(self.log_path))[-_LOG_TAIL_BYTES:]
        return (
            f"mosquitto failed to start on {LOCALHOST}:{self.port} (died or not ready in "
            f"{STARTUP_TIMEOUT:.0f}s) "
            f"(config {self.conf_path}); log tail:\n{tail}"
        )


@dataclass
class _DockerBackend:
    """An ``eclipse-mosquitto:2.0`` container bound to a fixed loopback host port."""

    port: int
    conf: str
    container: Any = None

    def start(self) -> None:
        if self.container is None:
            self.container = self._create()
            self.container.start()
        else:
            self._wrapped().start()
        self._wait_ready()

    def stop(self) -> None:
        self._wrapped().stop(timeout=int(STOP_TIMEOUT))  # SIGTERM, so persistence is saved

    def kill(self) -> None:
        self._wrapped().kill()

    def close(self) -> None:
        if self.container is not None:
            self.container.stop()  # removes the container and its volumes
            self.container = None

    def _create(self) -> Any:
        from testcontainers.core.container import DockerContainer

        container = (
            DockerContainer("eclipse-mosquitto:2.0")
            .with_bind_ports(1883, self.port)
            .with_copy_into_container(self.conf.encode(), "/mosquitto/config/mosquitto.conf")
        )
        # docker-py accepts (host_ip, host_port): publish on loopback only, on a fixed port.
        container.ports["1883"] = (LOCALHOST, self.port)  # type: ignore[assignment]
        return container

    def _wrapped(self) -> Any:
        if self.container is None:
            raise RuntimeError("docker broker is closed")
        return self.container.get_wrapped_container()

    def _wait_ready(self) -> None:
        # docker-proxy accepts TCP before mosquitto listens, hence the MQTT-level probe.
        if not _poll(lambda: mqtt_ready(LOCALHOST, self.port), STARTUP_TIMEOUT):
            logs = self._wrapped().logs().decode("utf-8", "replace")[-_LOG_TAIL_BYTES:]
            raise RuntimeError(
                f"docker mosquitto not ready on {LOCALHOST}:{self.port}; logs:\n{logs}"
            )


def _no_restarts() -> None:
    raise NotImplementedError("broker restarts need a local or docker broker")


@dataclass
class _ExternalBackend:
    """An already running broker: cannot be restarted from here."""

    def start(self) -> None:
        _no_restarts()

    def stop(self) -> None:
        _no_restarts()

    def kill(self) -> None:
        _no_restarts()

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- public API


@dataclass
class Broker:
    """A running MQTT broker reachable at ``host:port``."""

    host: str
    port: int
    log_path: Path | None = None
    _backend: _Backend = field(default_factory=_ExternalBackend, repr=False)

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop gracefully, stay down ``down_for`` seconds, start again on the same port."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        """Graceful stop (SIGTERM and wait): persistence, if enabled, is written."""
        self._backend.stop()

    def kill(self) -> None:
        """SIGKILL: nothing is saved beyond the last autosave."""
        self._backend.kill()

    def start(self) -> None:
        """Start again (same port) and wait until the broker answers."""
        self._backend.start()

    def close(self) -> None:
        """Stop for good and release resources; safe to call twice."""
        self._backend.close()


def start_broker(tmp_dir: Path, *, persistence: bool = False, extra_conf: str = "") -> Broker:
    """Start (or attach to) the broker selected by ``KAIRO_TEST_BROKER``."""
    mode = os.environ.get(ENV_VAR, "").strip() or "local"
    if mode == "local":
        return _start_local(Path(tmp_dir), persistence, extra_conf)
    if mode == "docker":
        return _start_docker(persistence, extra_conf)
    if mode.startswith("external:"):
        return _attach_external(mode.removeprefix("external:"))
    raise RuntimeError(f"{ENV_VAR}={mode!r}: expected 'local', 'docker' or 'external:HOST:PORT'")


def _start_local(tmp_dir: Path, persistence: bool, extra_conf: str) -> Broker:
    binary = _find_mosquitto()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = tmp_dir / "mosquitto.log"
    data_dir = tmp_dir / "mosq-data"
    if persistence:
        data_dir.mkdir(exist_ok=True)
    conf_path = tmp_dir / "mosquitto.conf"
    conf_path.write_text(
        mosquitto_conf(
            listener=f"{port} {LOCALHOST}",
            persistence_dir=str(data_dir) if persistence else None,
            log_dest=f"file {log_path}",
            run_as_root=os.geteuid() == 0,
            extra_conf=extra_conf,
        )
    )
    backend = _LocalBackend(binary=binary, conf_path=conf_path, log_path=log_path, port=port)
    try:
        backend.start()
    except BaseException:
        backend.close()
        raise
    return Broker(host=LOCALHOST, port=port, log_path=log_path, _backend=backend)


def _start_docker(persistence: bool, extra_conf: str) -> Broker:
    port = free_port()
    conf = mosquitto_conf(
        listener="1883",
        persistence_dir="/mosquitto/data" if persistence else None,
        log_dest="stdout",
        extra_conf=extra_conf,
    )
    backend = _DockerBackend(port=port, conf=conf)
    try:
        backend.start()
    except BaseException:
        backend.close()
        raise
    return Broker(host=LOCALHOST, port=port, log_path=None, _backend=backend)


def _attach_external(address: str) -> Broker:
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise RuntimeError(f"{ENV_VAR}=external:{address!r}: expected external:HOST:PORT")
    if not _is_loopback(host):
        raise RuntimeError(f"external broker host {host!r} refused: only loopback is allowed")
    port = int(port_text)
    if not wait_for_port(host, port, 5.0):
        raise RuntimeError(f"external broker {host}:{port} is not accepting connections")
    return Broker(host=host, port=port, log_path=None, _backend=_ExternalBackend())
