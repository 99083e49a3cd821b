"""Time-bounded reads in process: ``since``/``until`` with nothing keyed, and a replay's pages
with ``until``, through the daemon's ``Reader`` (the storage floor; no MQTT).

    python -m bench.time_bounds FILE.db|postgresql://... [--rounds 7] [--small-range N]
    python -m bench.time_bounds --pg-events 200000     # seeds SQLite + a local PostgreSQL

On a store seeded by ``bench.bulk_seed`` (events ``SPACING_MS`` apart from ``BASE_TS``, ``seq``
1..n). Each query case: ``Reader.answer_page`` with 100 events, p50 of ``--rounds``.
The replay case pages as ``api.replay`` does (``Reader.page_within``, 100 events, ``after`` and
``until`` 1,000 events later) from the middle, and over two small ranges: the whole stream and
its last page, the one that finds nothing more. Each case runs with two readers, interleaved:
``small_range`` 0 (every range walked in seq order, the plans before ``Reader.time_plan`` and
``seq_window``) and ``--small-range`` (default ``queries.SMALL_RANGE``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from sidecar.api.protocol import QueryRequest, ReplayRequest
from sidecar.config import DatabaseConfig
from sidecar.storage.queries import SMALL_RANGE, conditions
from sidecar.storage.reads import Reader, open_reader

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
                        help="a range with fewer events is read by its index (Reader)")
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
            print(f"{engine}:")
            run(target, rounds=args.rounds, small_range=args.small_range)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def run(target: str, *, rounds: int, small_range: int) -> None:
    """Each case with ``small_range`` 0 (every range walked in seq order: the plans before
    ``Reader.time_plan``/``seq_window``) and with ``small_range``, interleaved per round."""
    readers = [Reader(open_reader(DatabaseConfig(), path=target), small_range=small)
               for small in (0, small_range)]
    try:
        n = readers[1].last_seq()
        print(f"{n:,} events, {rounds} rounds interleaved; p50 ms: walked | small range by index")
        for name, body in cases(n):
            request = msgspec.convert(body, QueryRequest)
            cond = conditions(request)
            times: list[list[float]] = [[], []]
            found = 0
            for _ in range(rounds):
                for i, reader in enumerate(readers):
                    started = time.perf_counter()
                    page = reader.answer_page(cond, limit=100, max_bytes=10**7,
                                              order=request.order)
                    times[i].append((time.perf_counter() - started) * 1000)
                    found = len(page.events)
            print(f"  {name:38s} {statistics.median(times[0]):8.2f} | "
                  f"{statistics.median(times[1]):8.2f}   {found} events")
        for name, replay_request in replays(n):
            runs: list[list[tuple[float, float, int]]] = [[], []]
            for _ in range(rounds):
                for i, reader in enumerate(readers):
                    runs[i].append(replay(reader, replay_request))
            whole, last = ([statistics.median(r[k] for r in rs) for rs in runs] for k in (0, 1))
            print(f"  {name:38s} {whole[0]:8.2f} | {whole[1]:8.2f}   {runs[1][0][2]} events; "
                  f"last page {last[0]:.2f} | {last[1]:.2f}")
    finally:
        for reader in readers:
            reader.close()


if __name__ == "__main__":
    main()
