"""A sidecar running in this process (``Sidecar.run`` on a thread) over a real Mosquitto, for
the system tests. ``start_inprocess`` starts one on a broker the test already has; ``daemon``
starts a broker of its own too and stops both on exit: what the API suites' module fixtures share
(each passes its own settings, and its own database ``url`` where it runs on both engines)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.app import Sidecar
from sidecar.client import SidecarClient
from sidecar.config import DatabaseConfig, load_config
from tests.support.broker import Broker, start_broker
from tests.support.stores import Store


class Running:
    def __init__(self, sidecar: Sidecar, thread: threading.Thread, db_path: Path,
                 url: str | None = None) -> None:
        self.sidecar, self.thread, self.db_path = sidecar, thread, db_path
        self.url = url or f"sqlite:///{db_path}"  # the database, on either engine

    @property
    def db(self) -> str:
        """What ``--db`` takes: the SQLite file, or the PostgreSQL URL."""
        return str(self.db_path) if self.url.startswith("sqlite:") else self.url

    def rows(self, sql: str, *args: object) -> list[tuple]:
        if not self.url.startswith("sqlite:"):
            return Store("postgres", DatabaseConfig(url=self.url)).execute(sql, args)
        con = sqlite3.connect(self.db_path, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def event(self, event_id: str) -> dict:
        con = sqlite3.connect(self.db_path, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            row = con.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        finally:
            con.close()
        return dict(row) if row else {}


def start_inprocess(tmp_path: Path, broker: Broker, *, url: str | None = None,
                    **env: str) -> Running:
    environ = {"KAIRO_SIDECAR_MQTT__HOST": broker.host,
               "KAIRO_SIDECAR_MQTT__PORT": str(broker.port),
               "KAIRO_SIDECAR_DATABASE__URL": url or f"sqlite:///{tmp_path / 'kairo.db'}",
               "KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": "0.05",
               **{"KAIRO_SIDECAR_" + k.upper(): v for k, v in env.items()}}
    sidecar = Sidecar(load_config(environ=environ))
    ready = threading.Event()
    thread = threading.Thread(target=sidecar.run,
                              kwargs={"install_signals": False, "on_ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(15), "sidecar did not become ready"
    return Running(sidecar, thread, tmp_path / "kairo.db", url)



def stop(run: Running) -> None:
    """Stop the sidecar and wait for its thread (up to 15 s)."""
    run.sidecar.request_stop()
    run.thread.join(15)


@dataclass
class Daemon:
    """A broker of its own and the sidecar on it."""

    broker: Broker
    run: Running

    def client(self, **kwargs: Any) -> SidecarClient:
        return SidecarClient(self.broker.host, self.broker.port, **kwargs).connect()

    def rows(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return self.run.rows(sql, *args)


@contextmanager
def daemon(tmp: Path, *, url: str | None = None, **env: str) -> Iterator[Daemon]:
    """A broker under ``tmp / "broker"`` and a sidecar on it (``url`` and ``env`` as
    ``start_inprocess`` takes them); on exit the sidecar stops, then the broker."""
    broker = start_broker(tmp / "broker")
    try:
        run = start_inprocess(tmp, broker, url=url, **env)
        try:
            yield Daemon(broker, run)
        finally:
            stop(run)
    finally:
        broker.close()
