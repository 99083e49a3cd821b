"""Time-bounded reads in process: ``since``/``until`` with nothing keyed, and a replay's pages
with ``until``, through the daemon's ``Reader`` (the storage floor; no MQTT).

    python -m bench.time_bounds FILE.db|postgresql://... [--rounds 7] [--small-range 0]
    python -m bench.time_bounds --pg-events 200000     # seeds SQLite + a local PostgreSQL

On a store seeded by ``bench.bulk_seed`` (events ``SPACING_MS`` apart from ``BASE_TS``, ``seq``
1..n). Each query case: ``Reader.answer_page`` with 100 events, p50 and max of ``--rounds``.
The replay case pages as ``api.replay`` does (``Reader.page_within``, 100 events, ``after`` and
``until`` 1,000 events later) from the middle, and over two small ranges: the whole stream and
its last page, the one that finds nothing more. ``--small-range 0`` reads with the plans from
before ``Reader.time_plan``/``seq_window`` (every range walked in seq order).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from sidecar.api.protocol import QueryRequest, ReplayRequest
from sidecar.config import DatabaseConfig
from sidecar.storage.queries import SMALL_RANGE, Conditions, conditions
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


def replays(n: int) -> list[tuple[str, ReplayRequest]]:
    mid = BASE_TS + (n // 2) * SPACING_MS
    return [
        ("replay 1,000 from the middle, until", ReplayRequest(
            after=n // 2, until=BASE_TS + (n // 2 + 1000) * SPACING_MS)),
        ("replay since + until: 1 min (6,000)", ReplayRequest(since=mid, until=mid + 60_000)),
        ("replay until oldest + 10 s (1,000)", ReplayRequest(until=BASE_TS + 10_000)),
    ]


def replay(reader: Reader, request: ReplayRequest) -> tuple[float, float, int]:
    """(whole stream ms, last page ms, events) of a replay's pages."""
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
    parser.add_argument("db", nargs="?", help="an SQLite file or a postgresql:// URL")
    parser.add_argument("--pg-events", type=int, default=0,
                        help="seed this many events into a temporary SQLite file and a local "
                        "PostgreSQL (tests.support.postgres, bench.bulk_seed) and run on both")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--small-range", type=int, default=SMALL_RANGE,
                        help="0: never read a range through its index (the plans before it)")
    args = parser.parse_args(argv)
    if args.pg_events:
        _on_both(args)
    elif args.db:
        run(args.db, rounds=args.rounds, small_range=args.small_range)
    else:
        parser.error("name a database, or --pg-events")


def _on_both(args: argparse.Namespace) -> None:
    from sidecar.storage.startup import open_store
    from tests.support.postgres import start_local

    from .bulk_seed import seed_both
    from .ingest import migrated_db

    root = Path(tempfile.mkdtemp(prefix="kairo-bench-time-", dir="/tmp"))
    server = start_local()
    try:
        url = server.fresh_database()
        open_store(DatabaseConfig(url=url), schema="migrate").close()
        lite = migrated_db(root / "kairo.db")
        seed_both(lite, url, args.pg_events, progress=False)
        for engine, target in (("SQLite", str(lite)), ("PostgreSQL", url)):
            for small in (0, args.small_range):
                print(f"{engine}, small_range {small}:")
                run(target, rounds=args.rounds, small_range=small)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def run(target: str, *, rounds: int, small_range: int) -> None:
    reader = Reader(open_reader(DatabaseConfig(), path=target), small_range=small_range)
    try:
        n = reader.last_seq()
        print(f"{n:,} events, {rounds} rounds, p50 / max")
        for name, body in cases(n):
            request = msgspec.convert(body, QueryRequest)
            cond = conditions(request)

            def one(cond: Conditions = cond, order: str = request.order) -> AnswerPage:
                return reader.answer_page(cond, limit=100, max_bytes=10**7, order=order)

            p50, worst, found = _timed(one, rounds)
            print(f"  {name:38s} {p50:8.2f} / {worst:8.2f} ms  {len(found.events)} events")
        for name, replay_request in replays(n):
            runs = [replay(reader, replay_request) for _ in range(rounds)]
            print(f"  {name:38s} {statistics.median(r[0] for r in runs):8.2f} ms, last page "
                  f"{statistics.median(r[1] for r in runs):8.2f} ms  {runs[0][2]} events")
    finally:
        reader.close()


if __name__ == "__main__":
    main()
