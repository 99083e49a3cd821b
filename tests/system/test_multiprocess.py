"""Several processes on one database: SQLITE_BUSY is retried with backoff, never a crash; a reader
process, an importer, a backup and a check all work while the daemon ingests at full speed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import peewee
import pytest

from sidecar.errors import DatabaseBusyError
from sidecar.storage.sqlite_errors import is_busy, retry_busy
from tests.conftest import ROOT, count_rows, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Publisher, event_messages
from tests.support.seed import create_db, event, query

BUSY_MS = "20"  # small on purpose: the processes collide and must retry


# ------------------------------------------------------------------------------ retry_busy
def locked_db(tmp_path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Two connections; the first holds the write lock."""
    path = create_db(tmp_path / "k.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    return holder, other


def test_retry_busy_waits_for_the_lock(tmp_path: Path) -> None:
    """A write that hits SQLITE_BUSY is retried (backing off) until the lock is free."""
    holder, other = locked_db(tmp_path)
    sleeps: list[float] = []

    def sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 4:
            holder.execute("COMMIT")  # the other process finishes its transaction

    def write() -> int:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO kv_store (key, value, updated_at) VALUES ('k', '1', 1)")
        other.execute("COMMIT")
        return 1

    assert retry_busy(write, what="write", sleep=sleep) == 1
    assert sleeps == [0.02, 0.04, 0.08, 0.16]
    assert query(tmp_path / "k.db", "SELECT key FROM kv_store") == [("k",)]


def test_retry_busy_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    """Past the deadline the caller gets DatabaseBusyError (exit 7) saying what it waited for."""
    holder, other = locked_db(tmp_path)
    with pytest.raises(DatabaseBusyError, match="stayed locked") as info:
        retry_busy(lambda: other.execute("BEGIN IMMEDIATE"), what="import events", deadline=0.05,
                   sleep=lambda d: None)
    assert info.value.exit_code == 7
    holder.execute("COMMIT")


def test_other_errors_are_not_retried() -> None:
    """Only SQLITE_BUSY/LOCKED (plain or wrapped by Peewee) count as busy."""
    assert is_busy(sqlite3.OperationalError("database is locked"))
    assert is_busy(peewee.OperationalError(sqlite3.OperationalError("database is locked")))
    assert not is_busy(sqlite3.OperationalError("no such table: x"))
    assert not is_busy(sqlite3.IntegrityError("UNIQUE constraint failed"))
    calls = []

    def fail() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("no such table: x")

    with pytest.raises(sqlite3.OperationalError):
        retry_busy(fail, what="x")
    assert calls == [1]


# ------------------------------------------------------------------------------ together
def test_processes_share_the_database_under_load(tmp_path: Path, broker: Broker,
                                                 sidecar_factory) -> None:
    """While the daemon stores 20k events, a reader process, an import of 10k events, a backup
    and a check run beside it with a 20 ms busy timeout: all succeed, nothing is lost."""
    db_path = tmp_path / "kairo.db"
    create_db(db_path)
    to_import = create_db(tmp_path / "other.db", [event(i, prefix="imp") for i in range(10_000)])
    export = tmp_path / "imp.jsonl"
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{to_import}"}
    subprocess.run([sys.executable, "-m", "sidecar", "export", "-o", str(export)], env=env,
                   check=True, capture_output=True, cwd=ROOT, timeout=60)

    sidecar = sidecar_factory(broker, database__busy_timeout_ms=BUSY_MS,
                              writer__flush_interval="0.02", writer__retry_max_delay="0.2")
    sidecar.start()
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
           "KAIRO_SIDECAR_DATABASE__BUSY_TIMEOUT_MS": BUSY_MS, "KAIRO_SIDECAR_LOG__FORMAT": "json"}

    def cli(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "sidecar", *args], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    with Publisher(broker.host, broker.port, max_inflight=200) as pub:
        pub.publish_in_background(event_messages(20_000, prefix="live"))
        wait_until(lambda: count_rows(db_path) > 1000, timeout=30, message="ingest under way")
        reader = subprocess.Popen([sys.executable, "-m", "tests.support.reader", str(db_path), "300",
                                   BUSY_MS],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        importer = cli("import", str(export))
        backup = cli("backup", str(tmp_path / "backup.db"))
        check = cli("check", "--quick")
        results = {name: (p.wait(120), *p.communicate()) for name, p in
                   (("reader", reader), ("import", importer), ("backup", backup), ("check", check))}
        accepted = pub.wait_all(120)
    for name, (code, _, err) in results.items():
        assert code == 0, f"{name} exited {code}: {err.decode()[-2000:]}"
    seen = json.loads(results["reader"][1])
    assert seen["rounds"] == 300 and seen["monotonic"]
    assert b"imported 10000 new events" in results["import"][1]
    assert query(tmp_path / "backup.db", "PRAGMA integrity_check") == [("ok",)]
    assert len(accepted) == 20_000
    wait_until(lambda: count_rows(db_path) == 30_000, timeout=60, message="every event stored")
    assert sidecar.terminate() == 0
    assert "writer_died" not in sidecar.log_text()
