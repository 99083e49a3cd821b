"""Ad-hoc: GIN build time and search latency on PostgreSQL at N events (test server)."""
import statistics, sys, time
from sidecar.config import DatabaseConfig, SearchConfig
from sidecar.core.search_query import parse
from sidecar.api.protocol import QueryRequest
from sidecar.storage import search
from sidecar.storage.db import open_database
from sidecar.storage.queries import conditions
from tests.support.postgres import start_postgres
from tests.support.stores import make_store

N = int(sys.argv[1])
server = start_postgres()
try:
    url = server.fresh_database()
    make_store("postgres", url)
    db = open_database(DatabaseConfig(url=url))
    words = ["boiler", "pressure", "cellar", "kitchen", "alarm", "disk", "full", "sensor", "water", "light"]
    db.execute_sql(
        "INSERT INTO events (id, topic, type, source, payload, metadata, created_at, received_at) "
        "SELECT 'e' || g, 'kairo/x', 'kairo.note.' || mod(g, 7), 'pi' || mod(g, 3), "
        "jsonb_build_object('text', (ARRAY%s)[1 + mod(g, 10)] || ' reading ' || g || ' ' || "
        "(ARRAY%s)[1 + mod(g / 10, 10)], 'n', g, 'tag', 'rare' || mod(g, 1000)), '{}', g, g "
        "FROM generate_series(1, %d) g" % (words, words, N))
    db.commit() if not db.in_transaction() else None
    t = time.monotonic(); search.sync(db, SearchConfig(enabled=True))
    print(f"N={N} index build {time.monotonic() - t:.2f} s")
    size = db.execute_sql("SELECT pg_relation_size('events_search'), pg_relation_size('events')").fetchone()
    print(f"index {size[0]/1e6:.1f} MB, table {size[1]/1e6:.1f} MB")
    cond = conditions(QueryRequest())
    for q in ["rare517", '"boiler reading"', "boil*", "boiler", "alarm AND NOT water", "type:note pressure"]:
        for order in ("rank", "desc"):
            ms = []
            for _ in range(7):
                t = time.monotonic()
                search.matches(db, parse(q), cond, order=order, limit=20, after=None, rank_window=2000)
                ms.append((time.monotonic() - t) * 1000)
            print(f"{q!r:28} {order:5} p50 {statistics.median(ms):7.1f} ms")
    db.close()
    server.drop_database(url)
finally:
    server.stop()
