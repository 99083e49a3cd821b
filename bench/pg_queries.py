"""Query latency at 10,000,000 events on PostgreSQL next to SQLite, over MQTT (issue 13).

    flock /tmp/kairo-heavy.lock python -m bench.postgres queries [--events 10000000]
        [--rounds 200] [--indexes after|during] [--workers 2]

Seeds the same events into an SQLite store and a PostgreSQL database (``bench.bulk_seed``:
rows as the daemon stores them, generated once, COPY into PostgreSQL), starts one daemon on
each (``python -m sidecar run``, each on its own ``[api] base_topic``, one loopback Mosquitto
with ``set_tcp_nodelay true`` as ``python -m bench run`` has it), and times the request kinds
of ``bench.api.query_cases`` (every filter kind, 100-event pages), get by id and a 1,000-event
replay from the middle, round trip with ``sidecar.client``: p50 and p99 of ``--rounds`` each,
the two engines interleaved (the order rotates per round). Beside them, the same page read in
this process with the daemon's ``Reader`` on each engine (the storage floor; no MQTT). Stores
go under a temp dir in /tmp, removed at the end. The server is the tests'
(``tests/support/postgres.py``: fsync=off, shared_buffers 32 MB).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.api.protocol import QueryRequest
from sidecar.client import SidecarClient
from sidecar.config import DatabaseConfig, LogConfig
from sidecar.logs import configure_logging
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader
from sidecar.storage.startup import open_store

from .api import _sample, query_cases
from .bulk_seed import seed_both
from .events import BASE_TS, SPACING_MS
from .harness import percentile
from .ingest import migrated_db
from .procs import Sidecar

ENGINES = ("SQLite", "PostgreSQL")
REPLAY = 1000  # events in the replay case, batch 100


def _pg_scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    import psycopg2

    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        con.close()


def _check_same(sqlite_path: Path, url: str, n: int) -> None:
    """Both stores hold ``n`` events, and a few ``seq`` name the same id on both."""
    con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        lite = con.execute("SELECT count(*), max(seq), (SELECT indexed_upto FROM "
                           "event_keys_state) FROM events").fetchone()
        probes = [con.execute("SELECT seq, id FROM events WHERE seq = ?", (s,)).fetchone()
                  for s in (1, n // 3, n // 2, n)]
    finally:
        con.close()
    if tuple(lite) != (n, n, n):
        raise RuntimeError(f"SQLite store: count, max(seq), indexed_upto = {lite}, not {n}")
    pg = (_pg_scalar(url, "SELECT count(*) FROM events"),
          _pg_scalar(url, "SELECT max(seq) FROM events"))
    if pg != (n, n):
        raise RuntimeError(f"PostgreSQL: count, max(seq) = {pg}, not {n}")
    for seq, event_id in probes:
        got = _pg_scalar(url, "SELECT id FROM events WHERE seq = %s", (seq,))
        if got != event_id:
            raise RuntimeError(f"seq {seq} is {event_id} in SQLite, {got} in PostgreSQL")


def _sizes(sqlite_path: Path, url: str) -> str:
    lite = sqlite_path.stat().st_size
    pg = int(_pg_scalar(url, "SELECT pg_database_size(current_database())"))
    return f"SQLite file {lite / 2**30:.2f} GiB, PostgreSQL database {pg / 2**30:.2f} GiB"


def _cases(sample: dict[str, Any], clients: dict[str, SidecarClient],
           readers: dict[str, Reader]) -> list[tuple[str, dict[str, Callable[[int], Any]]]]:
    """(name, {variant: call}) per request kind; variants ``<engine>`` over MQTT and
    ``<engine> direct`` (the Reader in this process)."""
    out: list[tuple[str, dict[str, Callable[[int], Any]]]] = []
    for name, body, _ in query_cases(sample):
        calls: dict[str, Callable[[int], Any]] = {}
        for engine in ENGINES:
            client, reader = clients[engine], readers[engine]
            cond = conditions(QueryRequest(**body))
            calls[engine] = (lambda c, b: lambda i: c.query(limit=100, **b))(client, body)
            calls[f"{engine} direct"] = (lambda r, c: lambda i: r.page(c, limit=101))(reader,
                                                                                       cond)
        out.append((name, calls))
    ids = sample["ids"]
    calls = {}
    for engine in ENGINES:
        client, reader = clients[engine], readers[engine]
        calls[engine] = (lambda c: lambda i: c.get(ids[i % len(ids)]))(client)
        calls[f"{engine} direct"] = (lambda r: lambda i: r.get(ids[i % len(ids)]))(reader)
    out.append(("get by id", calls))
    mid = sample["mid"]
    # seq s was created at BASE_TS + (s - 1) * SPACING_MS; ``until`` is exclusive
    until = BASE_TS + (mid + REPLAY) * SPACING_MS

    def replay(client: SidecarClient) -> Callable[[int], Any]:
        def run(i: int) -> None:
            count = sum(1 for _ in client.replay(batch=100, after=mid, until=until))
            if count != REPLAY:
                raise RuntimeError(f"replay sent {count} of {REPLAY}")
        return run

    out.append((f"replay {REPLAY:,} events from the middle, batch 100",
                {engine: replay(clients[engine]) for engine in ENGINES}))
    return out


SLOW_MS = 1000.0  # a case whose warm-up call took longer gets a tenth of the rounds


def measure(sample: dict[str, Any], clients: dict[str, SidecarClient],
            readers: dict[str, Reader], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per call, by case and variant; every variant of a case once per round,
    the order rotating per round. A case slower than ``SLOW_MS`` on either engine (a plan
    that scans) runs ``rounds // 10`` rounds (at least 10), so one such case cannot take the
    run's whole budget: the table shows each case's count."""
    cases = _cases(sample, clients, readers)
    timings: dict[str, dict[str, list[float]]] = {name: {v: [] for v in calls}
                                                  for name, calls in cases}
    runs: dict[str, int] = {}
    for name, calls in cases:  # warm the caches and connections once
        slowest = 0.0
        for fn in calls.values():
            t = time.perf_counter()
            fn(0)
            slowest = max(slowest, (time.perf_counter() - t) * 1000)
        runs[name] = rounds if slowest < SLOW_MS else max(10, rounds // 10)
    for r in range(rounds):
        for name, calls in cases:
            if r >= runs[name]:
                continue
            variants = list(calls.items())
            k = r % len(variants)
            for variant, fn in variants[k:] + variants[:k]:
                t = time.perf_counter()
                fn(r)
                timings[name][variant].append((time.perf_counter() - t) * 1000)
    return timings


def report(timings: dict[str, dict[str, list[float]]]) -> None:
    print("| request | rounds | SQLite p50 / p99 | PostgreSQL p50 / p99 | PG / SQLite p50 | "
          "in process: SQLite p50, PostgreSQL p50 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, variants in timings.items():
        lite, pg = variants["SQLite"], variants["PostgreSQL"]
        direct = ""
        if "SQLite direct" in variants:
            direct = (f"{percentile(variants['SQLite direct'], 50):.2f}, "
                      f"{percentile(variants['PostgreSQL direct'], 50):.2f} ms")
        print(f"| {name} | {len(lite)} | {percentile(lite, 50):.1f} / {percentile(lite, 99):.1f} ms | "
              f"{percentile(pg, 50):.1f} / {percentile(pg, 99):.1f} ms | "
              f"{percentile(pg, 50) / percentile(lite, 50):.2f}x | {direct} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres queries",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--indexes", choices=("after", "during"), default="after",
                        help="PostgreSQL's secondary indexes made after COPY (default) or kept")
    parser.add_argument("--workers", type=int, default=2, help="processes generating rows")
    parser.add_argument("--chunk", type=int, default=50_000)
    args = parser.parse_args(argv)
    configure_logging(LogConfig(level="warning"))
    from tests.support.broker import start_broker
    from tests.support.postgres import start_local

    root = Path(tempfile.mkdtemp(prefix="kairo-bench-pgq-", dir="/tmp"))
    broker = start_broker(root / "broker", extra_conf="set_tcp_nodelay true\n")  # as bench run
    server = start_local()  # its own temp dir in /tmp (the postgres user must reach it)
    daemons: list[Sidecar] = []
    readers: dict[str, Reader] = {}
    try:
        url = server.fresh_database()
        open_store(DatabaseConfig(url=url), schema="migrate").close()
        (root / "lite").mkdir()
        lite_path = migrated_db(root / "lite" / "kairo.db")
        n = args.events
        print(f"seeding {n:,} events into SQLite and PostgreSQL (indexes {args.indexes}, "
              f"{args.workers} generating processes, chunks of {args.chunk:,})", flush=True)
        times = seed_both(lite_path, url, n, chunk=args.chunk, workers=args.workers,
                          indexes=args.indexes)
        _check_same(lite_path, url, n)
        print(f"  seeded in {times.total:.0f} s ({n / times.total:,.0f} events/s): main process "
              f"waited {times.waiting_for_rows:.0f} s for rows, SQLite INSERT+keys "
              f"{times.sqlite:.0f} s, waited {times.copy_wait:.0f} s for COPY; PostgreSQL "
              f"indexes {sum(times.pg_indexes.values()):.0f} s "
              f"({', '.join(f'{k} {v:.0f}' for k, v in times.pg_indexes.items())}), "
              f"event_types + VACUUM ANALYZE {times.pg_finish:.0f} s")
        print(f"  {_sizes(lite_path, url)}", flush=True)
        sample = _sample(lite_path)
        common = {"mqtt__session_expiry": "0", "writer__flush_interval": "0.1"}
        daemons = [
            Sidecar(root / "lite", broker.port, "bench-pgq-lite", overrides={
                **common, "api__base_topic": "kairo-lite", "database__startup_check": "off"}),
            Sidecar(root / "pgd", broker.port, "bench-pgq-pg", overrides={
                **common, "api__base_topic": "kairo-pg", "database__url": url}),
        ]
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_log("sidecar_ready", timeout=600)
        readers = {"SQLite": Reader(open_reader(DatabaseConfig(url=f"sqlite:///{lite_path}"))),
                   "PostgreSQL": Reader(open_reader(DatabaseConfig(url=url)))}
        with SidecarClient("127.0.0.1", broker.port, base_topic="kairo-lite", timeout=60) as lite, \
                SidecarClient("127.0.0.1", broker.port, base_topic="kairo-pg", timeout=60) as pg:
            started = time.perf_counter()
            timings = measure(sample, {"SQLite": lite, "PostgreSQL": pg}, readers, args.rounds)
            print(f"{n:,} events; {args.rounds} rounds, engines interleaved "
                  f"({time.perf_counter() - started:.0f} s)")
            report(timings)
    finally:
        for reader in readers.values():
            reader.close()
        for d in daemons:
            if d.stop():
                print(f"  the daemon in {d.workdir} did not stop cleanly")
        server.stop()
        broker.close()
        shutil.rmtree(root, ignore_errors=True)
