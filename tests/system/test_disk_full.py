"""Disk full while writing: the writer acks nothing, logs the real cause (not Peewee's failed
ROLLBACK), keeps retrying, and stores everything once space returns; the daemon keeps running
and even starts on a full disk.

The daemon test mounts a small tmpfs (root or CAP_SYS_ADMIN; skipped otherwise); the writer
test gets SQLITE_FULL from ``PRAGMA max_page_count`` and runs anywhere."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import peewee
import pytest

import models
from sidecar.config import DatabaseConfig, WriterConfig
from sidecar.core.events import now_ms
from sidecar.core.stats import Stats
from sidecar.ingest.decode import decode_message
from sidecar.ingest.writer import Delivery, Writer
from sidecar.storage.db import migrate, pragmas
from sidecar.storage.sqlite_errors import describe
from tests.conftest import SidecarProcess, wait_until
from tests.support import scenarios
from tests.support.broker import Broker
from tests.support.faultkit import SmallFilesystem, events_named, sidecar_env

SidecarFactory = Callable[..., SidecarProcess]


@pytest.fixture
def shared_db(tmp_path: Path) -> Iterator[peewee.SqliteDatabase]:
    """One connection shared by all threads, so the test can change the writer's
    ``max_page_count`` (a per-connection setting) while the writer runs."""
    db = peewee.SqliteDatabase(str(tmp_path / "full.db"), thread_safe=False,
                               check_same_thread=False,
                               pragmas=pragmas(DatabaseConfig(busy_timeout_ms=100)))
    models.database_proxy.initialize(db)
    migrate(db)
    yield db
    db.close()


def _row(i: int) -> object:
    data = b'{"id": "full-%d", "payload": {"blob": "%s"}}' % (i, b"z" * 2000)
    return decode_message("kairo/test/full", data, received_at=now_ms(), max_payload_bytes=10_000)


def test_describe_finds_the_error_behind_a_failed_rollback(shared_db: peewee.SqliteDatabase):
    """describe() returns SQLITE_FULL hidden behind Peewee's failed ROLLBACK.

    SQLITE_FULL inside ``atomic()`` surfaces as "cannot rollback - no transaction is active";
    ``describe`` returns the real cause and its code.

    Regression: the writer logged ``batch_write_failed error="cannot rollback - no transaction
    is active"`` on a full disk, hiding the cause."""
    pages = shared_db.execute_sql("PRAGMA page_count").fetchone()[0]
    shared_db.execute_sql(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(peewee.OperationalError) as info, shared_db.atomic("IMMEDIATE"):
        shared_db.execute_sql("INSERT INTO kv_store (key, value, updated_at) VALUES (?, ?, 0)",
                              ("k", "v" * 100_000))
    assert "no transaction is active" in str(info.value)
    assert describe(info.value) == ("database or disk is full", "SQLITE_FULL")
    assert describe(ValueError("plain")) == ("plain", None)


def test_writer_acks_nothing_while_the_database_is_full_then_stores_everything(
        shared_db: peewee.SqliteDatabase):
    """A full database: nothing acked while it lasts, all 50 stored and acked in order after.

    With the database capped at its current size, 50 deliveries fail to commit and nothing is acked
    (the writer retries); once the cap is lifted all 50 are stored and acked, in order."""
    acks: list[tuple[int, int]] = []
    lock = threading.Lock()

    def ack(tokens: Sequence[tuple[int, int]]) -> None:
        with lock:
            acks.extend(tokens)

    stats = Stats()
    writer = Writer(shared_db, WriterConfig(flush_interval=0.05, retry_max_delay=0.2),
                    ack=ack, window=1000, stats=stats)
    pages = shared_db.execute_sql("PRAGMA page_count").fetchone()[0]
    shared_db.execute_sql(f"PRAGMA max_page_count = {pages}")
    writer.start()
    try:
        for i in range(50):
            writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))  # type: ignore[arg-type]
        wait_until(lambda: stats.write_errors >= 3, message="three failed attempts")
        assert acks == [] and writer.failing and writer.alive
        assert shared_db.execute_sql("SELECT count(*) FROM events").fetchone()[0] == 0
        shared_db.execute_sql("PRAGMA max_page_count = 1073741823")
        wait_until(lambda: len(acks) == 50, message="all 50 acked once space is back")
    finally:
        assert writer.stop(5)
    assert [mid for _, mid in acks] == list(range(1, 51))
    assert shared_db.execute_sql("SELECT count(*) FROM events").fetchone()[0] == 50
    assert not writer.failing


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem]:
    reason = SmallFilesystem.unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    with SmallFilesystem(tmp_path / "small-fs", size=8 << 20) as fs:
        yield fs


@pytest.mark.slow
def test_daemon_survives_a_full_file_system(
        persistent_broker: Broker, sidecar_factory: SidecarFactory,
        small_fs: SmallFilesystem) -> None:
    """Disk full twice mid-stream (tmpfs): no ack, cause logged, alive, all 4,000 stored once.

    The database's 8 MiB tmpfs fills up twice during 4,000 events. The daemon logs
    ``batch_write_failed`` with SQLITE_FULL and keeps running; SIGKILLed and restarted while the
    disk is still full it comes up and keeps retrying; each time space returns it stores everything
    without a restart: exactly 4,000 rows."""
    db_path = small_fs.path / "kairo.db"
    sidecar = sidecar_factory(persistent_broker, **sidecar_env(
        database__url=f"sqlite:///{db_path}", writer__retry_max_delay=1))
    sidecar.db_path = db_path  # the log stays outside the small file system
    sidecar.start()
    result = scenarios.disk_full(small_fs, persistent_broker, sidecar, events=4000, full_for=3,
                                 rate=500)
    print(result)
    result.check()
    assert result.notes["errors"] == ["database or disk is full"] * 2, result.notes
    failed = events_named(sidecar.log_text(), "batch_write_failed")
    assert failed and {e["code"] for e in failed} <= {"SQLITE_FULL", "SQLITE_IOERR_WRITE"}, \
        {e["code"] for e in failed}
    assert sidecar.terminate() == 0
