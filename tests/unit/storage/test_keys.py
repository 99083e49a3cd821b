"""event_keys (migrations 004 and 005, storage.keys): a pre-004 and a pre-005 file migrate
without losing or duplicating a row, lookups and query answers stay the same, deletes forget
their keys, plans stay indexed."""

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
    return [row.seq for row in reader.page(conditions(request), limit=1000, order=request.order)]


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
    assert Router(db, migrate_dir=MIGRATIONS_DIR).run("004_event_keys") == ["004_event_keys"]
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


def _pre_005(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A file built by migrations 001-004 holding ``rows``, with gaps and a deleted tail."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    Router(db, migrate_dir=MIGRATIONS_DIR).run("004_event_keys")
    with db.atomic():
        _insert(db.cursor(), rows)
        db.execute_sql("DELETE FROM events WHERE seq > ?", (len(rows) - 5,))
        db.execute_sql("DELETE FROM events WHERE seq BETWEEN 100 AND 106")
    db.close()


def _typed_rows(n: int) -> list[tuple[Any, ...]]:
    """``_rows`` with five types (one non-ASCII) and created_at out of seq order."""
    types = ("kairo.user.login", "kairo.user.logout", "kairo.sensor.temp", "other", "kairo.\u00e9t\u00e9")
    return [(*row[:2], types[i % 5], *row[3:6], 1_700_000_000_000 + (i * 7919) % 1000, *row[7:])
            for i, row in enumerate(_rows(n))]


def test_migration_005_keeps_every_row_and_every_answer(tmp_path: Path) -> None:
    """A pre-005 file migrates with every row, seq and key as it was, the type indexes replaced
    by type tokens and event_types, and every type query (exact, list, glob, descending,
    paged, with a time range or an id) answering what the rows say."""
    path = tmp_path / "old.db"
    _pre_005(path, _typed_rows(600))
    before = _dump(path, "SELECT * FROM events ORDER BY seq")
    sequence = _dump(path, "SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    assert sequence == [(600,)] and len(before) == 588
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    assert migrate(db) == ["005_event_types", "006_kv_versions", "007_kv_projected_seq"]
    db.close()
    assert _dump(path, "SELECT * FROM events ORDER BY seq") == before
    assert _dump(path, "SELECT seq FROM sqlite_sequence WHERE name = 'events'") == sequence
    assert _dump(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
                       "ORDER BY name") == [("events_created_at_type",)]
    types = sorted({row[3] for row in before})
    assert _dump(path, "SELECT type FROM event_types ORDER BY type") == [(t,) for t in types]
    assert _dump(path, "INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)") == []
    since, until = 1_700_000_000_200, 1_700_000_000_700

    def expect(wanted: set[str], **more: Any) -> list[int]:
        return [row[0] for row in before if row[3] in wanted
                and (not more.get("timed") or since <= row[7] < until)
                and (more.get("corr") is None or row[9] == more["corr"])]

    reader = Reader(open_reader(DatabaseConfig(), path=path))
    try:
        for seq, event_id, *_ in before:
            assert reader.get(event_id).seq == seq  # type: ignore[union-attr]
        cases: list[tuple[Any, set[str]]] = [(t, {t}) for t in types]
        cases += [(["kairo.user.login", "other"], {"kairo.user.login", "other"}),
                  ("kairo.user.*", {"kairo.user.login", "kairo.user.logout"}),
                  (["kairo.*.temp", "other"], {"kairo.sensor.temp", "other"}),
                  ("kairo.\u00e9*", {"kairo.\u00e9t\u00e9"}), ("nothing.*", set()), ("absent", set())]
        for value, wanted in cases:
            assert _ids(reader, type=value) == expect(wanted), value
            assert _ids(reader, type=value, order="desc") == expect(wanted)[::-1], value
            assert _ids(reader, type=value, since=since, until=until) == \
                expect(wanted, timed=True), value
            assert _ids(reader, type=value, correlation_id="wf-3") == \
                expect(wanted, corr="wf-3"), value
            pages: list[int] = []
            after = 0
            while True:  # keyset pages of 7 from the cursor: every event once, none skipped
                request = msgspec.convert({"type": value, "after": after}, QueryRequest)
                got = [row.seq for row in reader.page(conditions(request), limit=7)]
                pages += got
                if len(got) < 7:
                    break
                after = got[-1]
            assert pages == expect(wanted), value
    finally:
        reader.db.close()
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    db.execute_sql("INSERT INTO events (id, topic, type, source, payload, metadata, created_at, "
                   "received_at) VALUES ('next', 't', 'brand.new', 's', '{}', '{}', 1, 1)")
    assert db.execute_sql("SELECT seq FROM events WHERE id = 'next'").fetchone() == (601,)
    assert db.execute_sql("SELECT rowid FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["brand.new"]),)).fetchall() == [(601,)]
    assert ("brand.new",) in db.execute_sql("SELECT type FROM event_types").fetchall()
    db.execute_sql("DELETE FROM events WHERE type = 'other'")
    assert db.execute_sql("SELECT rowid FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["other"]),)).fetchall() == []
    db.execute_sql("INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)")
    db.close()


def test_type_pages_stream_event_keys_in_seq_order(tmp_path: Path) -> None:
    """A type (or glob) query without an id or time filter reads the type's tokens from
    event_keys in rowid order from the cursor: no scan of events, no sort (a sort would read
    every event of the type: tens of ms at a million events)."""
    path = tmp_path / "p.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    for body in ({"type": "a"}, {"type": ["a", "b"]}, {"type": "a.*"},
                 {"type": "a", "source": "s", "after": 5}, {"type": "a.*", "order": "desc"}):
        request = msgspec.convert(body, QueryRequest)
        query = page(conditions(request), limit=100, order=request.order)
        sql, params = db.get_sql_context().sql(query).query()
        plan = " | ".join(row[3] for row in db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params))
        assert plan.startswith("SCAN t") and "VIRTUAL TABLE INDEX" in plan and \
            "TEMP B-TREE" not in plan and "SCAN events" not in plan, (body, plan)
    db.close()
