"""Full-text search on PostgreSQL (``storage.search_pg``): the GIN index's build time and size
and search latency at ``N`` synthetic events, on the tests' PostgreSQL server (Debian's
binaries). ``PYTHONPATH=. python -m bench.search_pg 200000``."""

from __future__ import annotations

import statistics
import sys
import time

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig, SearchConfig
from sidecar.core.search_query import parse
from sidecar.storage import search
from sidecar.storage.db import open_database
from sidecar.storage.queries import conditions
from tests.support.postgres import start_postgres
from tests.support.stores import make_store

WORDS = ["boiler", "pressure", "cellar", "kitchen", "alarm", "disk", "full", "sensor", "water",
         "light"]
QUERIES = ["rare517", '"boiler reading"', "boil*", "boiler", "alarm AND NOT water",
           "type:note pressure"]


def main(n: int) -> None:
    server = start_postgres()
    try:
        url = server.fresh_database()
        make_store("postgres", url)
        db = open_database(DatabaseConfig(url=url))
        db.execute_sql(
            "INSERT INTO events (id, topic, type, source, payload, metadata, created_at, "
            "received_at) SELECT 'e' || g, 'kairo/x', 'kairo.note.' || mod(g, 7), "
            f"'pi' || mod(g, 3), jsonb_build_object('text', (ARRAY{WORDS})[1 + mod(g, 10)] "
            f"|| ' reading ' || g || ' ' || (ARRAY{WORDS})[1 + mod(g / 10, 10)], 'n', g, "
            f"'tag', 'rare' || mod(g, 1000)), '{{}}', g, g FROM generate_series(1, {n}) g")
        started = time.monotonic()
        search.sync(db, SearchConfig(enabled=True))
        print(f"N={n} index build {time.monotonic() - started:.2f} s")
        index, table = db.execute_sql("SELECT pg_relation_size('events_search'), "
                                      "pg_relation_size('events')").fetchone()
        print(f"index {index / 1e6:.1f} MB, table {table / 1e6:.1f} MB")
        cond = conditions(QueryRequest())
        for query in QUERIES:
            for order in ("rank", "desc"):
                ms = []
                for _ in range(7):
                    started = time.monotonic()
                    search.matches(db, parse(query), cond, order=order, limit=20, after=None,
                                   rank_window=2000)
                    ms.append((time.monotonic() - started) * 1000)
                print(f"{query!r:28} {order:5} p50 {statistics.median(ms):7.1f} ms")
        db.close()
        server.drop_database(url)
    finally:
        server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
