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


def _plan_and_page(store: Store, request: QueryRequest, limit: int) -> tuple[str, list[str]]:
    """Seeds ``N`` events 10 ms apart (``ANALYZE`` on PostgreSQL); the plan of the page of
    ``request`` on the writer, and the ids of that page read through a reader."""
    store.insert_events([dict(zip(COLUMNS, (
        f"ev-{i:06d}", "kairo/t", f"kairo.t{i % 5}", "seed", json.dumps({"i": i}), "{}",
        BASE + i * 10, BASE + i * 10, None, None, None), strict=True)) for i in range(N)])
    cond = conditions(request)
    db = writer(store)
    try:
        if not dialects.of(db).files:
            db.execute_sql("ANALYZE events")
        plan = explain(db, page_keys(cond, limit=limit, dialect=dialects.of(db)))
    finally:
        db.close()
    reader = Reader(open_reader(store.config))
    try:
        found = reader.page(cond, limit=limit)
    finally:
        reader.db.close()
    return plan, [e.id for e in found]


def test_a_time_range_alone_reads_the_created_at_index(any_store: Store) -> None:
    """100,000 events 10 ms apart; a minute in the middle (6,000 events): the plan reads the index on
    created_at, and the page holds exactly that minute's first events in seq order."""
    since = BASE + (N // 2) * 10
    plan, found = _plan_and_page(any_store, QueryRequest(since=since, until=since + 60_000), 10)
    assert "events_created_at_type" in plan, plan
    assert found == [f"ev-{i:06d}" for i in range(N // 2, N // 2 + 10)]


def test_a_cursor_and_one_bound_walk_seq_on_postgresql(any_store: Store) -> None:
    """A replay's page (a cursor and ``until`` only) is read from the cursor in seq order on
    PostgreSQL, not by sorting every event before ``until`` (each page would sort it again)."""
    plan, found = _plan_and_page(any_store, QueryRequest(until=BASE + N * 10, after=N // 2), 100)
    if any_store.engine == "postgres":
        assert "Sort" not in plan, plan
    assert found == [f"ev-{i:06d}" for i in range(N // 2, N // 2 + 100)]  # seq = i + 1
