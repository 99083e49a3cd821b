"""``bench.bulk_seed``: the 10M-event read bench's seed stores what the daemon would have."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bench.bulk_seed import seed_both
from bench.events import seed_database
from bench.ingest import migrated_db
from sidecar.config import DatabaseConfig
from sidecar.core.events import EVENT_COLUMNS
from sidecar.storage import keys
from sidecar.storage.startup import open_store
from tests.support.postgres import Postgres

N = 2_500
_COLUMNS = ", ".join(("seq", *EVENT_COLUMNS))


def _lite_rows(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq").fetchall()
    finally:
        con.close()


def _comparable(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with payload and metadata parsed (JSONB reorders keys and spacing)."""
    at = {c: i + 1 for i, c in enumerate(EVENT_COLUMNS)}
    out = []
    for row in rows:
        r = list(row)
        for column in ("payload", "metadata"):
            r[at[column]] = json.loads(r[at[column]])
        out.append(tuple(r))
    return out


@pytest.fixture
def seeded(tmp_path: Path, pg_server: Postgres) -> tuple[Path, str]:
    url = pg_server.fresh_database()
    open_store(DatabaseConfig(url=url), schema="migrate").close()
    path = migrated_db(tmp_path / "bulk.db")
    seed_both(path, url, N, chunk=1_000, workers=1, progress=False)
    return path, url


def test_bulk_seed_sqlite_rows_and_keys_equal_the_writer_insert_path(
        seeded: tuple[Path, str], tmp_path: Path) -> None:
    """The SQLite store holds the rows seed_database (the writer's INSERT) makes, every key
    indexed and findable, the file back in WAL mode."""
    path, _ = seeded
    reference = migrated_db(tmp_path / "reference.db")
    seed_database(reference, N, chunk=1_000)  # the same messages: they depend on the chunks
    assert _lite_rows(path) == _lite_rows(reference)
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert keys.indexed_upto(con.cursor()) == N
        for seq, event_id in con.execute("SELECT seq, id FROM events WHERE seq IN (1, 1234, ?)",
                                         (N,)).fetchall():
            assert keys.seq_of(con.cursor(), event_id) == seq
        assert con.execute("SELECT count(*) FROM event_types").fetchone()[0] == \
            con.execute("SELECT count(DISTINCT type) FROM events").fetchone()[0]
    finally:
        con.close()


def test_bulk_seed_postgres_rows_indexes_and_trigger_are_the_migrated_schemas(
        seeded: tuple[Path, str], pg_server: Postgres) -> None:
    """PostgreSQL holds the same rows under the same seq, the migrations' indexes made again,
    the type trigger back on and event_types filled."""
    import psycopg2

    path, url = seeded
    fresh = pg_server.fresh_database()
    open_store(DatabaseConfig(url=fresh), schema="migrate").close()

    def query(target: str, sql: str) -> list[tuple[Any, ...]]:
        con = psycopg2.connect(target)
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                return [tuple(r) for r in cur.fetchall()]
        finally:
            con.close()

    columns = _COLUMNS.replace("payload", "payload::text").replace("metadata", "metadata::text")
    pg_rows = query(url, f"SELECT {columns} FROM events ORDER BY seq")
    assert _comparable(pg_rows) == _comparable(_lite_rows(path))
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' ORDER BY 1"
    assert query(url, indexes) == query(fresh, indexes)
    assert query(url, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'events_type_insert'") \
        == [("O",)]
    assert query(url, "SELECT type FROM event_types ORDER BY type") == \
        query(url, "SELECT DISTINCT type FROM events ORDER BY type")
