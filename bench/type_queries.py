"""Type and time queries on one database, in-process: the plan and the time of each page.

``python -m bench.type_queries FILE.db`` (a seeded 1,000,000-event store, e.g. the one
``bench.commit_wear`` keeps in ``/tmp/kairo-wear``). Each case: ``Reader.answer_page`` with 100
events, median and max of 7, and SQLite's plan of its key query. Run it on a file before and
after a migration to compare (BENCHMARKS.md, "SD-card wear: the type in event_keys").
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import msgspec

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig
from sidecar.storage.queries import conditions, page_keys
from sidecar.storage.reads import Reader, open_reader

from .events import BASE_TS, SPACING_MS


def cases(n: int = 1_000_000) -> list[tuple[str, dict[str, Any]]]:
    mid = n // 2
    mid_ts = BASE_TS + mid * SPACING_MS
    recent = BASE_TS + int(n * 0.99) * SPACING_MS
    return [
        ("type common", {"type": "kairo.sensor.temp"}),
        ("type common, middle page", {"type": "kairo.sensor.temp", "after": mid}),
        ("type rare", {"type": "kairo.audit.login"}),
        ("glob kairo.user.*", {"type": "kairo.user.*"}),
        ("glob, descending", {"type": "kairo.user.*", "order": "desc"}),
        ("time range 1 min", {"since": mid_ts, "until": mid_ts + 60_000}),
        ("type + 1 min", {"type": "kairo.sensor.temp", "since": mid_ts, "until": mid_ts + 60_000}),
        ("type + since last 1 %", {"type": "kairo.sensor.temp", "since": recent}),
        ("rare type + since middle", {"type": "kairo.audit.login", "since": mid_ts}),
        ("since last 1 %", {"since": recent}),
        ("type + source", {"type": "kairo.sensor.temp", "source": "device-017"}),
    ]


def main() -> None:
    reader = Reader(open_reader(DatabaseConfig(), path=sys.argv[1]))
    for name, body in cases():
        request = msgspec.convert(body, QueryRequest)
        cond = conditions(request)
        sql, params = reader.db.get_sql_context().sql(
            page_keys(cond, limit=101, order=request.order)).query()
        plan = " | ".join(row[3] for row in reader.db.execute_sql(f"EXPLAIN QUERY PLAN {sql}",
                                                                  params))
        times = []
        for _ in range(7):
            started = time.perf_counter()
            found = reader.answer_page(cond, limit=100, max_bytes=10**7, order=request.order)
            times.append((time.perf_counter() - started) * 1000)
        print(f"{name:26s} {statistics.median(times):7.2f} ms (max {max(times):6.2f}) "
              f"{len(found.events)} events  {plan}")


if __name__ == "__main__":
    main()
