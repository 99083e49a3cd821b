"""The start-up sequence (verify, open, fold in the WAL, migrate, vacuum mode) on real files, and
that `run` and `migrate` go through it."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli.commands import main as cli_main
from sidecar.config import Config, DatabaseConfig
from sidecar.errors import PendingMigrationsError, SchemaTooNewError, StorageError
from sidecar.storage import startup
from sidecar.storage.db import check_schema
from sidecar.storage.startup import open_store

MIGRATIONS = ["001_initial", "002_events_type_seq", "003_dead_letter_properties",
              "004_event_keys", "005_event_types", "006_kv_versions",
                           "007_kv_projected_seq", "009_deferred_keys", "010_keys_automerge",
                           "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]


def _cfg(path: Path, **kw: Any) -> DatabaseConfig:
    return DatabaseConfig(url=f"sqlite:///{path}", **kw)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _auto_vacuum(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA auto_vacuum").fetchone()[0]
    finally:
        con.close()


def _legacy_file(path: Path) -> None:
    """An SQLite file made without auto_vacuum (as before the sidecar set it), no tables of ours."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE unrelated (x)")
    con.commit()
    con.close()


def _too_new_file(path: Path) -> None:
    db = open_store(_cfg(path), schema="migrate")
    db.execute_sql("INSERT INTO migratehistory (name, migrated_at) VALUES ('999_future', "
                   "CURRENT_TIMESTAMP)")
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


class Spy:
    """Records how ``open_store`` was called, then calls the real one."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, config: DatabaseConfig, **kwargs: Any) -> Any:
        self.calls.append({"url": config.url, "schema": kwargs.get("schema")})
        return open_store(config, **kwargs)


def test_fresh_file_is_migrated_and_in_incremental_vacuum_mode(tmp_path: Path) -> None:
    """A file that does not exist yet is created, fully migrated and in incremental vacuum mode."""
    path = tmp_path / "sub" / "fresh.db"
    applied: list[str] = []
    db = open_store(_cfg(path), schema="migrate", on_migrated=applied.extend)
    try:
        assert applied == MIGRATIONS
        assert check_schema(db) == []
        assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


@pytest.mark.parametrize("shared", [False, True])
def test_not_sqlite_is_refused_untouched(tmp_path: Path, shared: bool) -> None:
    """A file that is not SQLite is refused with exit code 3, its bytes unchanged."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"my shopping list, not a database\n" * 100)
    before = _digest(path)
    with pytest.raises(StorageError, match="not an SQLite database") as info:
        open_store(_cfg(path), schema="migrate", shared=shared)
    assert info.value.exit_code == 3
    assert _digest(path) == before


@pytest.mark.parametrize(("schema", "shared"),
                         [("migrate", False), ("current", False), ("migrate", True)])
def test_schema_too_new_is_refused_untouched(tmp_path: Path, schema: Any, shared: bool) -> None:
    """A file migrated by a newer version is refused with exit code 4, its bytes unchanged."""
    path = tmp_path / "new.db"
    _too_new_file(path)
    before = _digest(path)
    with pytest.raises(SchemaTooNewError, match="999_future") as info:
        open_store(_cfg(path), schema=schema, shared=shared)
    assert info.value.exit_code == 4
    assert _digest(path) == before


def test_pending_migrations_refused_when_not_allowed_to_migrate(tmp_path: Path) -> None:
    """schema="current" refuses a file needing migrations (exit 3) and applies none."""
    path = tmp_path / "old.db"
    _legacy_file(path)
    with pytest.raises(PendingMigrationsError, match="kairo-sidecar migrate") as info:
        open_store(_cfg(path), schema="current")
    assert info.value.exit_code == 3 and info.value.pending == MIGRATIONS
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert "events" not in tables


def test_missing_file_is_not_created_when_create_is_false(tmp_path: Path) -> None:
    """create=False (purge, reingest) refuses a missing file instead of creating an empty one."""
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="does not exist"):
        open_store(_cfg(path), schema="unchecked", create=False, shared=True)
    assert not path.exists()


def test_vacuum_mode_is_converted_at_start_but_not_beside_the_daemon(tmp_path: Path) -> None:
    """An old non-incremental file is migrated by both, but only a start-up (not a shared
    command like import) rewrites it into incremental vacuum mode."""
    shared_path, start_path = tmp_path / "shared.db", tmp_path / "start.db"
    for path in (shared_path, start_path):
        _legacy_file(path)
        assert _auto_vacuum(path) == 0
    open_store(_cfg(shared_path), schema="migrate", shared=True).close()
    open_store(_cfg(start_path), schema="migrate").close()
    assert _auto_vacuum(shared_path) == 0
    assert _auto_vacuum(start_path) == 2
    for path in (shared_path, start_path):
        con = sqlite3.connect(path)
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        con.close()


def test_damaged_file_is_refused_at_start(tmp_path: Path) -> None:
    """The startup_check runs first: a damaged file is refused (exit 6) before it is opened."""
    path = tmp_path / "damaged.db"
    open_store(_cfg(path), schema="migrate").close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size:] = b"\xff" * (len(data) - page_size)  # every page after the header page
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(StorageError) as info:
        open_store(_cfg(path), schema="migrate")
    assert info.value.exit_code == 6
    assert _digest(path) == before


def test_run_opens_through_the_start_up_sequence(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` (Sidecar.open) uses open_store: migrating per migrate_on_start, else refusing."""
    from sidecar import app

    spy = Spy()
    monkeypatch.setattr(app, "open_store", spy)
    path = tmp_path / "run.db"
    sidecar = app.Sidecar(Config(database=_cfg(path)))
    sidecar.open()
    assert sidecar.db is not None
    sidecar.db.close()
    assert spy.calls == [{"url": f"sqlite:///{path}", "schema": "migrate"}]
    assert _auto_vacuum(path) == 2

    legacy = tmp_path / "legacy.db"
    _legacy_file(legacy)
    strict = app.Sidecar(Config(database=_cfg(legacy, migrate_on_start=False)))
    with pytest.raises(PendingMigrationsError):
        strict.open()
    assert spy.calls[-1] == {"url": f"sqlite:///{legacy}", "schema": "current"}


def test_migrate_command_opens_through_the_start_up_sequence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`kairo-sidecar migrate` uses open_store with schema="migrate" and prints what it applied."""
    cli = sys.modules[cli_main.__module__]  # the commands module, whatever it is named
    spy = Spy()
    monkeypatch.setattr(startup, "open_store", spy)
    path = tmp_path / "cli.db"
    _legacy_file(path)
    assert cli._cmd_migrate(Config(database=_cfg(path))) == 0
    assert [call["schema"] for call in spy.calls] == ["migrate"]
    assert capsys.readouterr().out.strip() == \
        f"applied {len(MIGRATIONS)} migration(s): {', '.join(MIGRATIONS)}"
    assert _auto_vacuum(path) == 2
