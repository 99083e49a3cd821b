"""Tests of opening the database: pragmas, migrations, and refusing a newer schema."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import DatabaseConfig
from sidecar.errors import SchemaTooNewError, StorageError
from sidecar.storage.db import check_schema, migrate, open_database, sqlite_path


def _cfg(path: Path, **kw: object) -> DatabaseConfig:
    return DatabaseConfig(url=f"sqlite:///{path}", **kw)  # type: ignore[arg-type]


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("KAIRO_SIDECAR_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///data/kairo.db", Path("data/kairo.db")),
    ("sqlite:////var/lib/k/kairo.db", Path("/var/lib/k/kairo.db")),
    ("sqlite:///a%20b.db", Path("a b.db")),
])
def test_sqlite_path_from_url(url: str, expected: Path) -> None:
    """sqlite:///relative and sqlite:////absolute URLs name the expected file."""
    assert sqlite_path(url) == expected


@pytest.mark.parametrize("url", ["postgresql://localhost/kairo", "sqlite:///", "mysql:///x"])
def test_unsupported_or_empty_url_is_refused(url: str) -> None:
    """Other schemes and a URL without a file are a clear StorageError."""
    with pytest.raises(StorageError):
        sqlite_path(url)


def test_every_connection_gets_the_pragmas(tmp_path: Path) -> None:
    """WAL, the configured synchronous level, busy timeout and cache size are set."""
    db = open_database(_cfg(tmp_path / "p.db", synchronous="FULL", busy_timeout_ms=1234,
                            cache_size_kib=2048))
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 1234
    assert db.execute_sql("PRAGMA cache_size").fetchone()[0] == -2048
    assert db.execute_sql("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    db.close()


def test_migrate_creates_the_tables_once(tmp_path: Path) -> None:
    """The first migrate creates every table and index; the second applies nothing. No
    B-tree on a random-valued key (id, correlation, trace): those are in event_keys (004), with
    the type (005)."""
    db = open_database(_cfg(tmp_path / "m.db"))
    assert migrate(db) == ["001_initial", "002_events_type_seq", "003_dead_letter_properties",
                           "004_event_keys", "005_event_types", "006_kv_versions",
                           "007_kv_projected_seq", "009_deferred_keys", "010_keys_automerge",
                           "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]
    assert migrate(db) == []
    tables = {r[0] for r in db.execute_sql("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "dead_letters", "kv_store", "delivery_ids", "event_keys", "event_types"} <= tables
    indexes = {r[0] for r in db.execute_sql(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='events'")}
    assert indexes == {"events_created_at_type"}
    triggers = {r[0] for r in db.execute_sql("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert triggers == {"events_keys_insert", "events_keys_delete"}
    db.close()


def test_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """A database with a migration this version does not know raises SchemaTooNewError, and
    `kairo-sidecar run` exits 4 without changing the file."""
    path = tmp_path / "new.db"
    db = open_database(_cfg(path))
    migrate(db)
    db.execute_sql("INSERT INTO migratehistory (name, migrated_at) VALUES ('999_future', "
                   "CURRENT_TIMESTAMP)")
    with pytest.raises(SchemaTooNewError, match="999_future"):
        check_schema(db)
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = _run("run", cwd=tmp_path, KAIRO_SIDECAR_DATABASE__URL=f"sqlite:///{path}",
                  KAIRO_SIDECAR_MQTT__PORT="1")
    assert result.returncode == 4, result.stderr
    assert "999_future" in result.stderr and "upgrade kairo-sidecar" in result.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_pending_migrations_without_migrate_on_start_refuse_to_run(tmp_path: Path) -> None:
    """With migrate_on_start = false a database needing migrations is refused (exit 3) and
    `kairo-sidecar migrate` then brings it up to date."""
    path = tmp_path / "pending.db"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()
    env = {"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{path}",
           "KAIRO_SIDECAR_DATABASE__MIGRATE_ON_START": "false", "KAIRO_SIDECAR_MQTT__PORT": "1"}
    result = _run("run", cwd=tmp_path, **env)
    assert result.returncode == 3, result.stderr
    assert "kairo-sidecar migrate" in result.stderr
    result = _run("migrate", cwd=tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert "001_initial" in result.stdout
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    con.close()
