"""WAL and page maintenance: checkpoints (start-up, periodic, shutdown), journal_size_limit, WAL
size, the one-time switch to incremental auto-vacuum, and the writer's between-batches hook."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from sidecar.config import Config, DatabaseConfig, WriterConfig, load_config
from sidecar.core.stats import Stats
from sidecar.ingest.writer import Delivery, Writer
from sidecar.storage.db import open_database
from sidecar.storage.maintenance import (
    Maintenance,
    checkpoint,
    ensure_incremental_vacuum,
    storage_info,
    wal_size,
)
from tests.conftest import wait_until
from tests.support.seed import create_db, event, insert_rows, query


def crashed_copy(src: Path, dest: Path, rows: int) -> None:
    """A database whose last transactions are only in the WAL, as a crash leaves it."""
    create_db(src)
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("BEGIN")
    con.executemany("INSERT INTO events (id, topic, type, source, payload, metadata, created_at, "
                    "received_at, correlation_id, causation_id, trace_id) VALUES "
                    "(?,?,?,?,?,?,?,?,?,?,?)", [event(i) for i in range(rows)])
    con.execute("COMMIT")
    shutil.copy(src, dest)  # copied while the connection is open: the WAL is not folded in
    shutil.copy(f"{src}-wal", f"{dest}-wal")
    con.close()


def test_truncate_checkpoint_empties_the_wal(tmp_path: Path) -> None:
    """A TRUNCATE checkpoint copies the WAL into the file and cuts the WAL to zero bytes."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'k.db'}"))
    db.execute_sql("CREATE TABLE t (x)")
    db.execute_sql("INSERT INTO t VALUES (1)")
    assert wal_size(tmp_path / "k.db") > 0
    result = checkpoint(db, "TRUNCATE")
    assert not result.busy
    assert wal_size(tmp_path / "k.db") == 0
    db.close()


def test_start_up_folds_a_leftover_wal_in(tmp_path: Path) -> None:
    """Opening the daemon's database after a crash checkpoints the leftover WAL (TRUNCATE)
    before migrations, and every committed row is there."""
    crashed_copy(tmp_path / "a.db", tmp_path / "kairo.db", 500)
    assert wal_size(tmp_path / "kairo.db") > 0
    sidecar = Sidecar(load_config(environ={
        "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{tmp_path / 'kairo.db'}"}))
    sidecar.open()
    assert sidecar.db is not None
    assert wal_size(tmp_path / "kairo.db") == 0
    assert sidecar.db.execute_sql("SELECT count(*) FROM events").fetchone()[0] == 500
    sidecar.db.close()


def test_journal_size_limit_and_wal_size_are_reported(tmp_path: Path) -> None:
    """Every connection gets [database] journal_size_limit; storage_info reports file and WAL."""
    config = load_config(environ={"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{tmp_path / 'k.db'}",
                                  "KAIRO_SIDECAR_DATABASE__JOURNAL_SIZE_LIMIT": "4MiB"})
    db = open_database(config.database)
    assert db.execute_sql("PRAGMA journal_size_limit").fetchone()[0] == 4 * 1024 * 1024
    db.execute_sql("CREATE TABLE t (x)")
    db.execute_sql("INSERT INTO t VALUES (zeroblob(100000))")
    info = storage_info(db, tmp_path / "k.db")
    assert info.wal_bytes == wal_size(tmp_path / "k.db") > 100_000
    assert info.auto_vacuum == "incremental"
    assert info.pages * info.page_size >= info.db_bytes - info.page_size
    db.close()


def test_existing_database_is_switched_to_incremental_vacuum(tmp_path: Path) -> None:
    """A database created without auto_vacuum is rewritten once (VACUUM) to INCREMENTAL,
    keeping every row; a second call does nothing."""
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = wal")
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    con.commit()
    con.close()
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 0  # the pragma alone is not enough
    assert ensure_incremental_vacuum(db)
    assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert db.execute_sql("SELECT count(*) FROM t").fetchone()[0] == 1000
    assert ensure_incremental_vacuum(db)
    db.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_periodic_passive_checkpoint(tmp_path: Path) -> None:
    """The hook checkpoints (PASSIVE) once checkpoint_interval has passed, not before."""
    path = create_db(tmp_path / "k.db")
    config = load_config(environ={"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{path}",
                                  "KAIRO_SIDECAR_DATABASE__CHECKPOINT_INTERVAL": "60s"})
    db = open_database(config.database)
    db.execute_sql("PRAGMA wal_autocheckpoint = 0")  # only ours
    insert_rows(db, [event(i) for i in range(200)])
    clock = Clock()
    hook = Maintenance(db, config, clock=clock)
    before = _backfilled(path)
    hook()
    assert _backfilled(path) == before  # not due yet
    clock.now += 61
    hook()
    assert _backfilled(path) > before
    db.close()


def _backfilled(path: Path) -> int:
    """Frames of the WAL already copied into the database (nBackfill in the -shm header)."""
    shm = Path(f"{path}-shm").read_bytes()
    return int.from_bytes(shm[96:100], "little")


def test_writer_runs_the_hook_between_batches_and_survives_its_errors(tmp_path: Path) -> None:
    """The writer calls the maintenance hook between batches (also when idle), and a failing
    hook neither stops the writer nor loses an event."""
    path = create_db(tmp_path / "k.db")
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        if len(calls) % 2:
            raise sqlite3.OperationalError("maintenance went wrong")

    acks: list[tuple[int, int]] = []
    writer = Writer(db, WriterConfig(batch_size=10, flush_interval=0.01), ack=acks.extend,
                    window=1000, stats=Stats(), maintenance=hook)
    writer.start()
    wait_until(lambda: len(calls) >= 2, message="the hook to run while idle")
    from sidecar.core.events import now_ms
    from sidecar.ingest.decode import decode_message
    for i in range(50):
        row = decode_message("kairo/t", f'{{"id": "m-{i}", "payload": {{}}}}'.encode(),
                             received_at=now_ms(), max_payload_bytes=10_000)
        writer.submit(Delivery(row, qos=1, mid=i + 1, generation=1))
    wait_until(lambda: len(acks) == 50, message="every event acked")
    assert writer.alive
    assert writer.stop(5)
    assert query(path, "SELECT count(*) FROM events")[0][0] == 50
    db.close()


@pytest.mark.parametrize("mode", ["PASSIVE", "TRUNCATE"])
def test_checkpoint_modes_are_checked(mode: str, tmp_path: Path) -> None:
    """Known modes run; an unknown one is refused before reaching SQL."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'k.db'}"))
    assert checkpoint(db, mode).wal_frames >= 0
    with pytest.raises(ValueError):
        checkpoint(db, "WHATEVER")
    db.close()


def test_maintenance_defaults() -> None:
    """Checkpoints every 5 minutes, a 32 MiB WAL limit, and no retention limit by default."""
    config = Config()
    assert config.database.checkpoint_interval == 300.0
    assert config.database.journal_size_limit == 32 * 1024 * 1024
    assert config.retention.max_age == 0.0 and config.retention.rules == []
