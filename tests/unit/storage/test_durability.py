"""JournalSync: one fdatasync on the right file, whatever happened to the WAL file since."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import DatabaseConfig
from sidecar.storage import durability
from sidecar.storage.db import open_database
from sidecar.storage.durability import JournalSync, journal_sync_for


@pytest.fixture
def synced(monkeypatch) -> list[tuple[int, int]]:
    """(device, inode) of every file fdatasync'ed through the module."""
    seen: list[tuple[int, int]] = []
    real = os.fdatasync

    def record(fd: int) -> None:
        st = os.fstat(fd)
        seen.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(durability.os, "fdatasync", record)
    return seen


def _ino(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _db(tmp_path: Path, **kw):
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'd.db'}", **kw))
    db.execute_sql("CREATE TABLE t (x)")
    return db


def test_syncs_the_wal_and_follows_truncation(tmp_path, synced):
    """The WAL itself is synced, also after a TRUNCATE checkpoint emptied it (same inode)."""
    db = _db(tmp_path)
    sync = journal_sync_for(db, durability="group")
    assert sync is not None and sync.wal
    wal = tmp_path / "d.db-wal"
    db.execute_sql("INSERT INTO t VALUES (1)")
    sync.sync()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert wal.stat().st_size == 0
    db.execute_sql("INSERT INTO t VALUES (2)")
    sync.sync()
    assert synced == [_ino(wal), _ino(wal)]
    sync.close()
    db.close()


def test_reopens_a_wal_deleted_and_created_again(tmp_path, synced):
    """A WAL removed and recreated (a new inode) is reopened, not the stale descriptor synced."""
    db = _db(tmp_path)
    sync = JournalSync(tmp_path / "d.db")
    wal = tmp_path / "d.db-wal"
    db.execute_sql("INSERT INTO t VALUES (1)")
    sync.sync()
    old = _ino(wal)
    db.close()  # the last connection checkpoints and deletes the WAL
    assert not wal.exists()
    sync.sync()  # no WAL: the database file is synced instead
    assert synced[-1] == _ino(tmp_path / "d.db")
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'd.db'}"))
    db.execute_sql("INSERT INTO t VALUES (2)")
    sync.sync()
    assert synced[-1] == _ino(wal) and synced[0] == old
    sync.close()
    db.close()


def test_rollback_journal_mode_syncs_the_database_file(tmp_path, synced):
    """Without WAL the database file is what a commit wrote, so it is what gets synced."""
    db = _db(tmp_path)
    db.execute_sql("PRAGMA journal_mode=DELETE")
    sync = journal_sync_for(db, durability="group")
    assert sync is not None and not sync.wal
    db.execute_sql("INSERT INTO t VALUES (1)")
    sync.sync()
    assert synced == [_ino(tmp_path / "d.db")]
    sync.close()
    db.close()


def test_only_group_durability_gets_a_sync(tmp_path):
    """full and none ack after the commit: no sync of ours."""
    db = _db(tmp_path)
    assert journal_sync_for(db, durability="full") is None
    assert journal_sync_for(db, durability="none") is None
    db.close()
