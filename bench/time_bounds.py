"""Time-bounded reads in process: ``since``/``until`` with nothing keyed, and a replay's pages
with ``until``, through the daemon's ``Reader`` (the storage floor; no MQTT).

    python -m bench.time_bounds FILE.db|postgresql://... [--rounds 7]

On a store seeded by ``bench.bulk_seed`` (events ``SPACING_MS`` apart from ``BASE_TS``, ``seq``
1..n). Each query case: ``Reader.answer_page`` with 100 events, p50 and max of ``--rounds``.
The replay case pages as ``api.replay`` does (``Reader.page_within``, 100 events, ``after`` and
``until`` 1,000 events later) from the middle: the whole stream and its last page, the one that
finds nothing more.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from sidecar.api.protocol import QueryRequest, ReplayRequest
from sidecar.config import DatabaseConfig
from sidecar.storage.queries import Conditions, conditions
from sidecar.storage.reads import AnswerPage, Reader, open_reader

from .events import BASE_TS, SPACING_MS

HOUR = 3_600_000


def cases(n: int) -> list[tuple[str, dict[str, Any]]]:
    mid = BASE_TS + (n // 2) * SPACING_MS
    newest = BASE_TS + (n - 1) * SPACING_MS
    now = int(time.time() * 1000)
    return [
        ("since 1 h ago (wall clock: none match)", {"since": now - HOUR}),
        ("since 1 h ago, desc", {"since": now - HOUR, "order": "desc"}),
        ("since newest - 1 min (6,000)", {"since": newest - 60_000}),
        ("since newest - 1 min, desc", {"since": newest - 60_000, "order": "desc"}),
        ("since newest - 1 h", {"since": newest - HOUR}),
        ("since newest - 1 h, desc", {"since": newest - HOUR, "order": "desc"}),
        ("since the middle", {"since": mid}),
        ("since the middle, desc", {"since": mid, "order": "desc"}),
        ("until the middle", {"until": mid}),
        ("until the middle, desc", {"until": mid, "order": "desc"}),
        ("until oldest + 1 min, desc", {"until": BASE_TS + 60_000, "order": "desc"}),
        ("since + until: 1 min in the middle", {"since": mid, "until": mid + 60_000}),
        ("until the middle, page after it", {"until": mid, "after": n // 2 + 10}),
    ]


def _timed(call: Callable[[], Any], rounds: int) -> tuple[float, float, Any]:
    times = []
    result = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), result


def replay(reader: Reader, n: int) -> tuple[float, float, int]:
    """(whole stream ms, last page ms, events) of a 1,000-event replay from the middle."""
    start = n // 2
    request = ReplayRequest(after=start, until=BASE_TS + (start + 1000) * SPACING_MS)
    began = time.perf_counter()
    cond = reader.seq_window(conditions(request))  # as ReplayStream does, once
    cursor: int | None = request.after
    count = 0
    last = 0.0
    while True:
        t = time.perf_counter()
        rows, more = reader.page_within(cond, limit=100, max_bytes=10**7, after=cursor)
        last = (time.perf_counter() - t) * 1000
        count += len(rows)
        if rows:
            cursor = rows[-1].seq
        if not more:
            break
    return (time.perf_counter() - began) * 1000, last, count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.time_bounds",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("db", help="an SQLite file or a postgresql:// URL")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    reader = Reader(open_reader(DatabaseConfig(), path=args.db))
    try:
        n = reader.last_seq()
        print(f"{n:,} events, {args.rounds} rounds, p50 / max")
        for name, body in cases(n):
            request = msgspec.convert(body, QueryRequest)
            cond = conditions(request)

            def one(cond: Conditions = cond, order: str = request.order) -> AnswerPage:
                return reader.answer_page(cond, limit=100, max_bytes=10**7, order=order)

            p50, worst, found = _timed(one, args.rounds)
            print(f"  {name:38s} {p50:8.2f} / {worst:8.2f} ms  {len(found.events)} events")
        runs = [replay(reader, n) for _ in range(args.rounds)]
        print(f"  {'replay 1,000 from the middle, until':38s} "
              f"{statistics.median(r[0] for r in runs):8.2f} ms, last page "
              f"{statistics.median(r[1] for r in runs):8.2f} ms  {runs[0][2]} events")
    finally:
        reader.close()


if __name__ == "__main__":
    main()
