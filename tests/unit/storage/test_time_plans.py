"""A time range alone is read through the ``(created_at, type)`` index on both engines (a real
SQLite file and a real PostgreSQL), never by walking ``seq`` and filtering on ``created_at``:
PostgreSQL's planner chose that walk, half the table for a range in the middle."""

from __future__ import annotations

import json

from sidecar.api.protocol import QueryRequest
from sidecar.storage import dialect as dialects
from sidecar.storage.queries import conditions, page_keys
from sidecar.storage.reads import Reader, open_reader
from tests.support.seed import COLUMNS
from tests.support.stores import Store
from tests.unit.storage.test_latest import explain, writer

BASE = 1_790_000_000_000
N = 100_000


def test_a_time_range_alone_reads_the_created_at_index(any_store: Store) -> None:
    """100,000 events 10 ms apart; a minute in the middle (6,000 events): the plan reads the index on
    created_at, and the page holds exactly that minute's first events in seq order."""
    any_store.insert_events([dict(zip(COLUMNS, (
        f"ev-{i:06d}", "kairo/t", f"kairo.t{i % 5}", "seed", json.dumps({"i": i}), "{}",
        BASE + i * 10, BASE + i * 10, None, None, None), strict=True)) for i in range(N)])
    db = writer(any_store)
    try:
        if not dialects.of(db).files:
            db.execute_sql("ANALYZE events")
        since, until = BASE + (N // 2) * 10, BASE + (N // 2) * 10 + 60_000
        cond = conditions(QueryRequest(since=since, until=until))
        plan = explain(db, page_keys(cond, limit=10, dialect=dialects.of(db)))
        assert "events_created_at_type" in plan, plan
    finally:
        db.close()
    reader = Reader(open_reader(any_store.config))
    try:
        found = reader.page(cond, limit=10)
    finally:
        reader.db.close()
    assert [e.id for e in found] == [f"ev-{i:06d}" for i in range(N // 2, N // 2 + 10)]


def test_a_cursor_and_one_bound_walk_seq_on_postgresql(any_store: Store) -> None:
    """A replay's page (a cursor and ``until`` only) is read from the cursor in seq order on
    PostgreSQL, not by sorting every event before ``until`` (each page would sort it again)."""
    any_store.insert_events([dict(zip(COLUMNS, (
        f"ev-{i:06d}", "kairo/t", f"kairo.t{i % 5}", "seed", json.dumps({"i": i}), "{}",
        BASE + i * 10, BASE + i * 10, None, None, None), strict=True)) for i in range(N)])
    db = writer(any_store)
    try:
        if not dialects.of(db).files:
            db.execute_sql("ANALYZE events")
        cond = conditions(QueryRequest(until=BASE + N * 10, after=N // 2))
        plan = explain(db, page_keys(cond, limit=100, dialect=dialects.of(db)))
        if not dialects.of(db).files:
            assert "Sort" not in plan, plan
    finally:
        db.close()
    reader = Reader(open_reader(any_store.config))
    try:
        found = reader.page(cond, limit=100)
    finally:
        reader.db.close()
    assert [e.id for e in found] == [f"ev-{i:06d}" for i in range(N // 2, N // 2 + 100)]  # seq = i + 1
