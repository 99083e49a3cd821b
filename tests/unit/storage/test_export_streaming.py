"""``export`` on PostgreSQL streams through a server-side cursor instead of loading every row."""

from __future__ import annotations

import io
import json

from sidecar.config import DatabaseConfig
from sidecar.storage.reads import open_reader
from sidecar.storage.transfer import EXPORT_CURSOR, export
from tests.support.postgres import Postgres
from tests.support.stores import Store, make_store


def test_export_on_postgres_reads_through_a_named_cursor(pg_server: Postgres) -> None:
    """While the export writes its batches its session is fetching from the named cursor
    (rows come 1,000 at a time); the lines are every event in seq order, then the kv entry."""
    store: Store = make_store("postgres", pg_server.fresh_database())
    n = 3500
    store.insert_events([{"id": f"x-{i:05d}", "topic": "kairo/x", "type": "kairo.x",
                          "source": "s", "payload": f'{{"i": {i}}}', "metadata": "{}",
                          "created_at": i, "received_at": i} for i in range(n)])
    store.execute("INSERT INTO kv_store (key, value, version, updated_at) VALUES (?, ?, ?, ?)",
                  ("k", "1", 1, 1))
    open_cursors: list[int] = []

    def progress(done: int, total: int) -> None:
        # the export's session, between two FETCHes of its cursor, as another session sees it
        rows = store.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in "
                             "transaction' AND query LIKE ?", (f'FETCH FORWARD % "{EXPORT_CURSOR}"',))
        open_cursors.append(int(rows[0][0]))

    db = open_reader(DatabaseConfig(url=store.url))
    out = io.BytesIO()
    try:
        assert export(db, out, progress=progress) == n
    finally:
        db.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["id"] for e in lines[:-1]] == [f"x-{i:05d}" for i in range(n)]
    assert lines[-1]["kv"]["key"] == "k"
    assert open_cursors == [1, 1, 1, 1]
