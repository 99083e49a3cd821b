"""Shared fixtures: a real Mosquitto broker, a real SQLite file, a sidecar process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sidecar.config import LogConfig
from sidecar.logs import configure_logging
from tests.support.broker import Broker, start_broker
from tests.support.postgres import Postgres, PostgresUnavailable, start_postgres
from tests.support.stores import Store, Target, make_store, target_count

if TYPE_CHECKING:
    from sidecar.client import SidecarClient
    from tests.support.inprocess import Daemon

ROOT = Path(__file__).resolve().parent.parent

configure_logging(LogConfig(level="warning", format="console"))


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto on a free loopback port, without persistence."""
    b = start_broker(tmp_path / "broker")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def client(env: Daemon) -> Iterator[SidecarClient]:
    """A client connected to the module's ``env`` fixture (a ``tests.support.inprocess.Daemon``:
    test_handlers, test_kv, test_search), closed after the test."""
    c = env.client()
    yield c
    c.close()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto with persistence on, so restarts keep sessions and queued messages."""
    b = start_broker(tmp_path / "pbroker", persistence=True)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL server for the session (Debian's binaries, or docker with
    ``KAIRO_TEST_DB=docker``); the tests that need it skip, saying why, where neither runs."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


def engine_database(request: pytest.FixtureRequest, engine: str, path: Path) -> Iterator[str]:
    """Yield the URL of an empty database on ``engine`` (a file under ``path``, or a fresh
    PostgreSQL database, dropped afterwards)."""
    if engine == "sqlite":
        yield f"sqlite:///{path / 'kairo.db'}"
        return
    server: Postgres = request.getfixturevalue("pg_server")
    url = server.fresh_database()
    try:
        yield url
    finally:
        server.drop_database(url)


ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: an SQLite file under ``tmp_path``, or a fresh PostgreSQL
    database (the suites that take it run on both engines)."""
    yield from engine_database(request, request.param, tmp_path)


@pytest.fixture(params=ENGINES)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store on each engine."""
    for url in engine_database(request, request.param, tmp_path):
        yield make_store(request.param, url)


@pytest.fixture(scope="module", params=ENGINES)
def module_store(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A migrated store on each engine, shared by a module's tests (they only read it)."""
    path = tmp_path_factory.mktemp("store")
    for url in engine_database(request, request.param, path):
        yield make_store(request.param, url)


def count_rows(db: Target, table: str = "events") -> int:
    """Rows in ``table`` of an SQLite file or a PostgreSQL URL (``SidecarProcess.db``)."""
    return target_count(db, table)


class SidecarProcess:
    """``python -m sidecar run`` as a child process, configured through environment variables."""

    def __init__(self, tmp_path: Path, broker: Broker, **overrides: object) -> None:
        self.db_path = tmp_path / "kairo.db"
        self.log_path = tmp_path / "sidecar.log"
        self.env = dict(os.environ)
        self.env.update({
            "KAIRO_SIDECAR_MQTT__HOST": broker.host,
            "KAIRO_SIDECAR_MQTT__PORT": str(broker.port),
            "KAIRO_SIDECAR_MQTT__CLIENT_ID": f"kairo-sidecar-test-{os.getpid()}-{id(self)}",
            "KAIRO_SIDECAR_MQTT__RECONNECT_MIN_DELAY": "1",
            "KAIRO_SIDECAR_MQTT__RECONNECT_MAX_DELAY": "2",
            "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{self.db_path}",
            # the tests wait on commits: 1 s (the default before issue 11) unless a test sets it
            "KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": "1",
            "KAIRO_SIDECAR_LOG__FORMAT": "json",
        })
        for key, value in overrides.items():
            self.env["KAIRO_SIDECAR_" + key.upper()] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapper: list[str] = []  # a command the daemon runs under (e.g. strace ... --)

    @property
    def engine(self) -> str:
        """``"sqlite"`` or ``"postgres"``, from ``[database] url``."""
        return "sqlite" if self.env["KAIRO_SIDECAR_DATABASE__URL"].startswith("sqlite:") \
            else "postgres"

    @property
    def db(self) -> Target:
        """What the tests read: the SQLite file, or the PostgreSQL URL."""
        return self.db_path if self.engine == "sqlite" else self.env["KAIRO_SIDECAR_DATABASE__URL"]

    def start(self, *, wait_ready: bool = True) -> SidecarProcess:
        offset = len(self.log_text())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([*self.wrapper, sys.executable, "-m", "sidecar", "run"],
                                     env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.db_path.parent)
        log.close()
        if wait_ready:
            self.wait_log("sidecar_ready", after=offset, timeout=20)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, *, after: int = 0, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited ({self.proc.returncode}):\n{self.log_text()}")
            return needle in self.log_text()[after:]
        wait_until(seen, timeout=timeout, message=f"{needle!r} in the sidecar log")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    made: list[SidecarProcess] = []

    def make(broker: Broker, **overrides: object) -> SidecarProcess:
        proc = SidecarProcess(tmp_path, broker, **overrides)
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            proc.close()
