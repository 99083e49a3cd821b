"""PostgreSQL: ingest with 1, 2 and 3 sidecars in one shared group, and read latency at a
large size next to SQLite on the same machine (issue 13).

    flock /tmp/kairo-heavy.lock python -m bench.postgres [--events 30000] [--big 1000000]
                                                          [--rounds 2] [--reads 300]
    flock /tmp/kairo-heavy.lock python -m bench.postgres queries [--events 10000000] ...

``queries``: request latency over MQTT at 10,000,000 events on both engines
(``bench.pg_queries``, its own options). Without it:

Needs Debian's PostgreSQL server binaries and ``mosquitto`` (started as the tests start them:
``tests/support/postgres.py``, ``tests/support/broker.py``; the server runs with fsync=off,
as the test server does, so commits cost what a fast disk's would).

* ingest: ``--events`` QoS 1 messages published at full speed (``bench.load.RawPublisher``)
  into N = 1, 2, 3 sidecars with ``[mqtt] shared_group``, each into a fresh database; the
  rate is events over the time from the first publish to the last row committed (polled),
  median of ``--rounds``; the ratio is to N = 1. ``[writer] flush_interval = 0.1`` for all.
* reads: ``--big`` events seeded into SQLite (``bench.events.seed_database``, the writer's
  INSERT), copied into PostgreSQL with ``kairo-sidecar copy`` (its rate is shown too), then
  ``Reader`` calls, as the request API makes them, on each: get by id, a 100-event page of a
  common type from the middle, a correlation id. Median and p95 of ``--reads`` calls each.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig, LogConfig
from sidecar.logs import configure_logging
from sidecar.storage.copying import copy_store
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader

from .api import _sample
from .events import make_messages, seed_database
from .ingest import migrated_db
from .load import RawPublisher
from .procs import Sidecar

# Every variant flushes a batch after 0.1 s (default 5 s, a wear setting for SQLite): else the
# last partial batch of each member waits 5 s and the tail, not the rate, is measured.
FLUSH = "0.1"


def _count(url: str) -> int:
    import psycopg2

    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT count(*) FROM events")
            return int(cur.fetchone()[0])
    except psycopg2.Error:
        return 0
    finally:
        con.close()


def ingest_round(root: Path, port: int, url: str, members: int, n: int, tag: str) -> float:
    """Events per second through ``members`` sidecars in one shared group into ``url``."""
    sidecars = [Sidecar(root / f"{tag}-m{i}", port, f"bench-pg-{tag}-{i}", overrides={
        "database__url": url, "mqtt__shared_group": f"bench{tag}",
        "mqtt__session_expiry": "60", "writer__flush_interval": FLUSH}) for i in range(members)]
    try:
        for sc in sidecars:
            sc.start()
        for sc in sidecars:
            sc.wait_log("mqtt_subscribed", timeout=60)
        messages = make_messages(n, seed=7)
        started = time.monotonic()
        with RawPublisher("127.0.0.1", port) as pub:
            pub.burst(pub.packets(messages))
        deadline = started + 600
        while _count(url) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {_count(url)} of {n} events after 600 s")
            time.sleep(0.02)
        return n / (time.monotonic() - started)
    finally:
        for sc in sidecars:
            sc.stop()


def _timed(call: Any, args: list[Any]) -> tuple[float, float]:
    times = []
    for arg in args:
        t = time.perf_counter()
        call(arg)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def read_latency(config: DatabaseConfig, sample: dict[str, Any],
                 reads: int) -> dict[str, tuple[float, float]]:
    reader = Reader(open_reader(config))
    rnd = random.Random(3)
    ids = [rnd.choice(sample["ids"]) for _ in range(reads)]
    kind = conditions(QueryRequest(type="kairo.sensor.temp"))
    corr = conditions(QueryRequest(correlation_id=sample["correlation_id"]))
    afters = [rnd.randrange(sample["mid"] // 2, sample["mid"]) for _ in range(reads)]
    try:
        reader.get(ids[0])  # connect
        return {
            "get by id": _timed(reader.get, ids),
            "type page (100, from the middle)": _timed(
                lambda a: reader.page(kind, limit=100, after=a), afters),
            "correlation id": _timed(lambda _: reader.page(corr, limit=100), list(range(reads))),
        }
    finally:
        reader.db.close()


def main() -> None:
    if sys.argv[1:2] == ["queries"]:
        from .pg_queries import main as queries_main

        queries_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.postgres")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning"))
    from tests.support.broker import start_broker
    from tests.support.postgres import start_local

    root = Path(tempfile.mkdtemp(prefix="kairo-bench-pg-"))
    broker = start_broker(root / "broker")
    server = start_local()
    try:
        if not args.skip_ingest:
            print(f"ingest: {args.events:,} QoS 1 events, median of {args.rounds} rounds")
            rates: dict[int, float] = {}
            for members in (1, 2, 3):
                got = []
                for r in range(args.rounds):
                    url = server.fresh_database()
                    got.append(ingest_round(root, broker.port, url, members, args.events,
                                            f"{members}-{r}"))
                    server.drop_database(url)
                rates[members] = statistics.median(got)
                print(f"  {members} sidecar(s): {rates[members]:,.0f} events/s "
                      f"(x{rates[members] / rates[1]:.2f} of 1) rounds {[round(g) for g in got]}")
        print(f"reads at {args.big:,} events")
        sqlite_path = migrated_db(root / "big.db")
        seconds = seed_database(sqlite_path, args.big)
        print(f"  seeded SQLite in {seconds:.0f} s")
        lite = DatabaseConfig(url=f"sqlite:///{sqlite_path}")
        pg = DatabaseConfig(url=server.fresh_database())
        t = time.monotonic()
        copy_store(lite, pg, batch_size=5000)
        copied = time.monotonic() - t
        print(f"  copied into PostgreSQL in {copied:.0f} s ({args.big / copied:,.0f} events/s, "
              "kairo-sidecar copy)")
        sample = _sample(sqlite_path)
        for name, config in (("SQLite", lite), ("PostgreSQL", pg)):
            for op, (p50, p95) in read_latency(config, sample, args.reads).items():
                print(f"  {name:<10} {op:<34} median {p50:7.3f} ms  p95 {p95:7.3f} ms")
    finally:
        server.stop()
        broker.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
