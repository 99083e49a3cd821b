"""event_keys (migration 004, storage.keys): a pre-004 file migrates without losing or duplicating
a row, lookups and query answers stay the same, deletes forget their keys, plans stay indexed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
from peewee_migrate import Router

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig
from sidecar.core.events import uuid7
from sidecar.storage import keys
from sidecar.storage.db import MIGRATIONS_DIR, migrate, open_database
from sidecar.storage.queries import by_id, conditions, page
from sidecar.storage.reads import Reader, open_reader

COLUMNS = ("id", "topic", "type", "source", "payload", "metadata", "created_at", "received_at",
           "correlation_id", "causation_id", "trace_id")
FILTERS = ("correlation_id", "causation_id", "trace_id")


def _rows(n: int) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(n):
        event_id = uuid7() if i % 4 == 0 else f"ev-{i:05d}-\u00e9"  # generated ids, non-ASCII ids
        rows.append((event_id, f"kairo/t/{i % 3}", f"kairo.t.{i % 3}", "s", f'{{"i":{i}}}', "{}",
                     1_700_000_000_000 + i, 1_700_000_000_000 + i,
                     f"wf-{i % 17}" if i % 2 else None, f"cause-{i % 5}" if i % 3 == 0 else None,
                     f"tr-{i % 11}" if i % 5 == 0 else None))
    return rows


def _insert(con: Any, rows: list[tuple[Any, ...]]) -> None:
    con.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def _pre_004(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A file built by migrations 001-003 holding ``rows``, the last 5 deleted (so
    sqlite_sequence is past max(seq)), 7 in the middle deleted, and delivery-id records."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    Router(db, migrate_dir=MIGRATIONS_DIR).run("003_dead_letter_properties")
    with db.atomic():
        _insert(db.cursor(), rows)
        db.execute_sql("DELETE FROM events WHERE seq > ?", (len(rows) - 5,))
        db.execute_sql("DELETE FROM events WHERE seq BETWEEN 100 AND 106")
        db.execute_sql("INSERT INTO delivery_ids (mid, event_id, digest) VALUES (7, ?, x'00')",
                       (rows[0][0],))
    db.close()


def _dump(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _ids(reader: Reader, **filters: Any) -> list[int]:
    request = msgspec.convert(filters, QueryRequest)
    return [row.seq for row in reader.page(conditions(request), limit=1000)]


def test_migration_004_keeps_every_row_and_every_answer(tmp_path: Path) -> None:
    """A pre-004 file (rows with correlation/causation/trace ids, generated ids, gaps, a deleted
    tail) migrates with every row and seq as it was, sqlite_sequence kept, the old indexes
    gone, and every lookup answering what the old columns say."""
    path = tmp_path / "old.db"
    rows = _rows(600)
    _pre_004(path, rows)
    before = _dump(path, "SELECT * FROM events ORDER BY seq")
    sequence = _dump(path, "SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    assert sequence == [(600,)] and len(before) == 588
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    assert migrate(db) == ["004_event_keys"]
    db.close()
    assert _dump(path, "SELECT * FROM events ORDER BY seq") == before
    assert _dump(path, "SELECT seq FROM sqlite_sequence WHERE name = 'events'") == sequence
    assert _dump(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
                       "ORDER BY name") == [("events_created_at",), ("events_type_created_at",),
                                            ("events_type_seq",)]
    assert _dump(path, "SELECT count(*) FROM delivery_ids") == [(1,)]
    assert _dump(path, "INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)") == []
    reader = Reader(open_reader(DatabaseConfig(), path=path))
    try:
        for seq, event_id, *_ in before:
            assert reader.get(event_id).seq == seq  # type: ignore[union-attr]
        assert reader.get("ev-00599-\u00e9") is None  # deleted before the migration
        for name in FILTERS:
            position = 1 + COLUMNS.index(name)
            for value in {row[position] for row in before} - {None}:
                expected = [row[0] for row in before if row[position] == value]
                assert _ids(reader, **{name: value}) == expected, (name, value)
                assert _ids(reader, **{name: value, "type": "kairo.t.1"}) == \
                    [row[0] for row in before if row[position] == value and row[3] == "kairo.t.1"]
    finally:
        reader.db.close()
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    db.execute_sql("INSERT INTO events (id, topic, type, source, payload, metadata, created_at, "
                   "received_at) VALUES ('next', 't', 't', 's', '{}', '{}', 1, 1)")
    assert db.execute_sql("SELECT seq FROM events WHERE id = 'next'").fetchone() == (601,)
    db.close()


def test_deleted_events_leave_no_keys(tmp_path: Path) -> None:
    """A delete (as purge and the disk guard do) removes the row's tokens in the same
    transaction: its id is free again, the index stays consistent."""
    path = tmp_path / "k.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    rows = _rows(300)
    with db.atomic():
        _insert(db.cursor(), rows)
    with db.atomic():
        db.execute_sql("DELETE FROM events WHERE seq <= 200")
    cursor = db.cursor()
    found = keys.stored_events(cursor, [row[0] for row in rows])
    assert sorted(value[0] for value in found.values()) == list(range(201, 301))
    assert db.execute_sql("SELECT rowid FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("correlation_id", ["wf-1"]),)).fetchall() == \
        db.execute_sql("SELECT seq FROM events WHERE correlation_id = 'wf-1'").fetchall()
    db.execute_sql("INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)")
    db.close()


def test_lookups_read_only_the_matching_rows(tmp_path: Path) -> None:
    """Get by id and the id filters never scan events: the plan reads event_keys and then the
    rows by seq (a full scan would be seconds at a million events)."""
    path = tmp_path / "p.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    queries = [by_id("x")]
    for name in FILTERS:
        for extra in ({}, {"type": "kairo.t.1"}, {"since": 1}):
            request = msgspec.convert({name: "v", **extra}, QueryRequest)
            queries.append(page(conditions(request), limit=100))
    for query in queries:
        sql, params = db.get_sql_context().sql(query).query()
        plan = " | ".join(row[3] for row in db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "VIRTUAL TABLE INDEX" in plan and "SCAN t1" not in plan and \
            "SCAN events" not in plan, plan
    db.close()
