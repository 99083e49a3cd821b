"""event_keys (migrations 004 and 005, storage.keys): a pre-004 and a pre-005 file migrate
without losing or duplicating a row, lookups and query answers stay the same, deletes forget
their keys, plans stay indexed."""

from __future__ import annotations

import re
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
from sidecar.storage.queries import by_id, conditions, page, page_keys
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
    # (the reader is today's: it reads the schema of today's migrations, applied at the end)
    assert _dump(path, "SELECT * FROM events ORDER BY seq") == before
    assert _dump(path, "SELECT seq FROM sqlite_sequence WHERE name = 'events'") == sequence
    assert _dump(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
                       "ORDER BY name") == [("events_created_at",), ("events_type_created_at",),
                                            ("events_type_seq",)]
    assert _dump(path, "SELECT count(*) FROM delivery_ids") == [(1,)]
    assert _dump(path, "INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)") == []
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    assert migrate(db) == ["005_event_types", "006_kv_versions", "007_kv_projected_seq",
                           "009_deferred_keys", "010_keys_automerge",
                           "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]
    db.close()
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
        assert keys.catch_up(db.cursor()) == 300  # indexed (deletes in the tail: test_tail_*)
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
    assert migrate(db) == ["005_event_types", "006_kv_versions", "007_kv_projected_seq",
                           "009_deferred_keys", "010_keys_automerge",
                           "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]
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
    with db.atomic():  # a new row waits in the tail (009) until the next catch-up
        assert keys.catch_up(db.cursor()) == 1
    assert db.execute_sql("SELECT rowid FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["brand.new"]),)).fetchall() == [(601,)]
    assert ("brand.new",) in db.execute_sql("SELECT type FROM event_types").fetchall()
    db.execute_sql("DELETE FROM events WHERE type = 'other'")
    assert db.execute_sql("SELECT rowid FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["other"]),)).fetchall() == []
    db.execute_sql("INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)")
    db.close()


def _plan(db: Any, query: Any) -> list[tuple[int, int, str]]:
    sql, params = db.get_sql_context().sql(query).query()
    return [(row[0], row[1], row[3]) for row in db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params)]


def _sorts_inside_an_arm(plan: list[tuple[int, int, str]]) -> list[str]:
    """The sorts (TEMP B-TREE) under a CO-ROUTINE of the plan: an arm that would read and sort
    every event of the type, where the merge of the arms sorts at most ``limit`` rows each."""
    parent = {node: up for node, up, _ in plan}
    detail = {node: text for node, _, text in plan}
    found = []
    for node, _, text in plan:
        if "TEMP B-TREE" not in text:
            continue
        up = parent[node]
        while up:
            if detail.get(up, "").startswith("CO-ROUTINE"):
                found.append(text)
            up = parent.get(up, 0)
    return found


def test_type_pages_stream_event_keys_in_seq_order(tmp_path: Path) -> None:
    """A type (or glob) query without an id or time filter reads the type's tokens from
    event_keys in rowid order from the cursor up to the watermark, and the unindexed tail by
    rowid range: no scan of events, no sort inside either arm (a sort would read every event
    of the type: tens of ms at a million events), only the merge of at most ``limit`` rows
    from each."""
    path = tmp_path / "p.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    for body in ({"type": "a"}, {"type": ["a", "b"]}, {"type": "a.*"},
                 {"type": "a", "source": "s", "after": 5}, {"type": "a.*", "order": "desc"}):
        request = msgspec.convert(body, QueryRequest)
        for query in (page(conditions(request), limit=100, order=request.order),
                      page_keys(conditions(request), limit=100, order=request.order)):
            plan = _plan(db, query)
            text = " | ".join(row[2] for row in plan)
            assert plan[0][2] == "MERGE (UNION ALL)" and "VIRTUAL TABLE INDEX" in text and \
                "USING INTEGER PRIMARY KEY (rowid>?" in text and "SCAN events" not in text and \
                not any(re.fullmatch(r"SCAN t\d+", row[2]) for row in plan) and \
                not _sorts_inside_an_arm(plan), (body, text)
    db.close()


# ------------------------------------------------------------------ deferred keys (009)
def _state(db: Any) -> tuple[int, int]:
    """(the watermark, max(seq))."""
    return db.execute_sql("SELECT indexed_upto, (SELECT coalesce(max(seq), 0) FROM events) "
                          "FROM event_keys_state").fetchone()


def _check_fts(db: Any) -> None:
    db.execute_sql("INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)")


def _answers(reader: Reader, rows: list[tuple[Any, ...]]) -> None:
    """Every lookup and type page ``reader`` gives is what ``rows`` (``SELECT * FROM events``
    in seq order) say: get by id, each id filter alone and with a type, and each type asc,
    desc, and in keyset pages of 7 both ways (cursors crossing the watermark)."""
    for seq, event_id, *_ in rows:
        assert reader.get(event_id).seq == seq  # type: ignore[union-attr]
    for name in FILTERS:
        position = 1 + COLUMNS.index(name)
        for value in {row[position] for row in rows} - {None}:
            assert _ids(reader, **{name: value}) == [r[0] for r in rows if r[position] == value]
            assert _ids(reader, **{name: value, "type": "kairo.user.login"}) == \
                [r[0] for r in rows if r[position] == value and r[3] == "kairo.user.login"]
    cases: list[tuple[Any, set[str]]] = [(t, {t}) for t in {row[3] for row in rows}]
    cases += [("kairo.user.*", {"kairo.user.login", "kairo.user.logout"}), ("absent", set())]
    for value, wanted in cases:
        expected = [r[0] for r in rows if r[3] in wanted]
        assert _ids(reader, type=value) == expected, value
        assert _ids(reader, type=value, order="desc") == expected[::-1], value
        for order, start in (("asc", 0), ("desc", 10**9)):
            pages: list[int] = []
            after = start
            while True:
                request = msgspec.convert({"type": value, "after": after, "order": order},
                                          QueryRequest)
                got = [row.seq for row in reader.page(conditions(request), limit=7, order=order)]
                pages += got
                if len(got) < 7:
                    break
                after = got[-1]
            assert pages == (expected if order == "asc" else expected[::-1]), (value, order)


def test_migration_009_keeps_every_row_and_every_answer(tmp_path: Path) -> None:
    """A 005 file (keys indexed by trigger) migrates with every row as it was, the watermark at
    max(seq), FTS5 consistent, every answer the same; new rows wait in the tail, deletes of
    indexed rows still forget their keys."""
    path = tmp_path / "old.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    Router(db, migrate_dir=MIGRATIONS_DIR).run("005_event_types")
    with db.atomic():
        _insert(db.cursor(), _typed_rows(600))
        db.execute_sql("DELETE FROM events WHERE seq > 595 OR seq BETWEEN 100 AND 106")
    db.close()
    before = _dump(path, "SELECT * FROM events ORDER BY seq")
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    assert migrate(db) == ["006_kv_versions", "007_kv_projected_seq", "009_deferred_keys",
                           "010_keys_automerge",
                           "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]
    assert _state(db) == (595, 595)
    _check_fts(db)
    db.close()
    assert _dump(path, "SELECT * FROM events ORDER BY seq") == before
    reader = Reader(open_reader(DatabaseConfig(), path=path))
    try:
        _answers(reader, before)
    finally:
        reader.db.close()
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    _insert(db.cursor(), [("late", "t", "brand.new", "s", "{}", "{}", 1, 1, None, None, None)])
    assert _state(db) == (595, 601)  # in the tail; its type is listed at once
    assert ("brand.new",) in db.execute_sql("SELECT type FROM event_types").fetchall()
    db.execute_sql("DELETE FROM events WHERE seq <= 50")
    _check_fts(db)
    assert keys.seq_of(db.cursor(), "late") == 601 and keys.seq_of(db.cursor(), before[0][1]) is None
    db.close()


def test_answers_are_the_same_indexed_in_the_tail_and_across_catch_up(tmp_path: Path) -> None:
    """Lookups and type pages (asc, desc, cursors crossing the watermark) answer the same with
    nothing indexed, part indexed, and all indexed: the tail is read, nothing is counted twice."""
    path = tmp_path / "t.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    with db.atomic():
        _insert(db.cursor(), _typed_rows(400))
    rows = _dump(path, "SELECT * FROM events ORDER BY seq")
    reader = Reader(open_reader(DatabaseConfig(), path=path))
    try:
        for step in (None, 137, 150, None):  # none, then 137, 287, then all indexed
            if step is not None or _state(db)[0]:
                with db.atomic("IMMEDIATE"):
                    keys.catch_up(db.cursor(), limit=step)
            _answers(reader, rows)
        assert _state(db) == (400, 400)
        _check_fts(db)
    finally:
        reader.db.close()
        db.close()


def test_catch_up_indexes_in_seq_order_up_to_the_limit(tmp_path: Path) -> None:
    """catch_up indexes the first ``limit`` unindexed events (gaps skipped), moves the
    watermark to the last of them, and returns how many; nothing waiting is a no-op."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'c.db'}"))
    migrate(db)
    with db.atomic():
        _insert(db.cursor(), _rows(100))
        db.execute_sql("DELETE FROM events WHERE seq BETWEEN 11 AND 20")
    cursor = db.cursor()
    assert keys.unindexed(cursor) == 100
    assert keys.catch_up(cursor, limit=15) == 15 and keys.indexed_upto(cursor) == 25
    assert keys.catch_up(cursor) == 75 and keys.indexed_upto(cursor) == 100
    assert keys.catch_up(cursor) == 0 and keys.unindexed(cursor) == 0
    assert db.execute_sql("SELECT count(*) FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["kairo.t.1"]),)).fetchone() == \
        db.execute_sql("SELECT count(*) FROM events WHERE type = 'kairo.t.1'").fetchone()
    _check_fts(db)
    db.close()


def test_deletes_of_indexed_and_unindexed_rows_keep_event_keys_consistent(tmp_path: Path) -> None:
    """Purge and the disk guard delete the oldest rows, which may be indexed or in the tail:
    FTS5 stays consistent (a 'delete' of a rowid it does not hold would corrupt it), the
    deleted ids are free, and a later catch-up indexes only the rows left."""
    path = tmp_path / "d.db"
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    rows = _typed_rows(300)
    with db.atomic():
        _insert(db.cursor(), rows)
        keys.catch_up(db.cursor(), limit=120)
    with db.atomic():  # across the watermark (120): indexed rows and tail rows
        db.execute_sql("DELETE FROM events WHERE seq <= 200")
    _check_fts(db)
    assert db.execute_sql("SELECT count(*) FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["other"]),)).fetchone() == (0,)
    found = keys.stored_events(db.cursor(), [row[0] for row in rows])
    assert sorted(value[0] for value in found.values()) == list(range(201, 301))
    with db.atomic():
        assert keys.catch_up(db.cursor()) == 100
    with db.atomic():
        db.execute_sql("DELETE FROM events WHERE seq <= 250")
    _check_fts(db)
    reader = Reader(open_reader(DatabaseConfig(), path=path))
    try:
        _answers(reader, _dump(path, "SELECT * FROM events ORDER BY seq"))
    finally:
        reader.db.close()
    db.close()


def test_migration_010_sets_automerge_16_and_rolls_back_to_fts5s_default(tmp_path: Path) -> None:
    """A new store's event_keys merges 16 segments a level (stored in event_keys_config, so
    every connection gets it); rolling 010 back restores FTS5's default of 4."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'a.db'}"))
    migrate(db)

    def automerge() -> list[tuple[object, ...]]:
        return [tuple(r) for r in db.execute_sql(
            "SELECT v FROM event_keys_config WHERE k = 'automerge'").fetchall()]

    assert automerge() == [(16,)]
    router = Router(db, migrate_dir=MIGRATIONS_DIR)
    router.rollback()  # 013 (search merges)
    router.rollback()  # 012 (a no-op on SQLite)
    router.rollback()  # 011 (search)
    router.rollback()  # 010
    assert automerge() == [(4,)]
    db.close()


def test_migration_009_rolls_back_with_the_tail_indexed(tmp_path: Path) -> None:
    """Rolling 009 back indexes the tail first (005's triggers assume every row is indexed):
    FTS5 consistent, the tail's keys found; migrating again starts the watermark at max(seq)."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'r.db'}"))
    migrate(db)
    with db.atomic():
        _insert(db.cursor(), _typed_rows(50))
        keys.catch_up(db.cursor(), limit=20)
    router = Router(db, migrate_dir=MIGRATIONS_DIR)
    router.rollback()  # 013 (search merges)
    router.rollback()  # 012 (a no-op on SQLite)
    router.rollback()  # 011 (search)
    router.rollback()  # 010
    router.rollback()  # 009
    _check_fts(db)
    assert db.execute_sql("SELECT count(*) FROM event_keys WHERE event_keys MATCH ?",
                          (keys.match("type", ["other"]),)).fetchone() == (10,)
    assert migrate(db) == ["009_deferred_keys", "010_keys_automerge", "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]
    assert _state(db) == (50, 50)
    db.close()
