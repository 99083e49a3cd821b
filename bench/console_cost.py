"""What the web console's JSON costs on a large store: each ``/api/*`` page timed over HTTP
(client included), the chart uncached, and the bytes the process writes meanwhile.

Usage: python -m bench.console_cost [--events 1000000] [--hours 24] [--rounds 20]

Seeds ``--events`` events (``bench.events``: eleven types, 50 sources, half with a correlation
id) spread evenly over the last ``--hours`` hours, so every chart range up to that holds them
all, runs the sidecar in-process against a loopback Mosquitto with ``[http] listen`` on, and
times ``--rounds`` GETs of each page (the chart with its cache off: every GET counts).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench.events import chunks, insert_sql, make_messages, rows_for
from bench.harness import percentile, time_gets
from bench.inprocess import sidecar_thread
from sidecar.config import LogConfig, load_config
from sidecar.http import console
from sidecar.http.metrics import written_bytes
from sidecar.logs import configure_logging
from sidecar.storage import keys
from sidecar.storage.db import migrate, open_database
from tests.support.broker import free_port


def seed_recent(path: Path, n: int, hours: float, chunk: int = 50_000) -> float:
    """``n`` events, evenly spaced, the newest now; the writer's INSERT and key indexing."""
    now = int(time.time() * 1000)
    span = int(hours * 3_600_000)
    spacing = max(1, span // max(1, n))
    first = now - spacing * n
    started = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA synchronous=OFF")
    sql = insert_sql()
    for start, size in chunks(n, chunk):
        messages = make_messages(size, start=start, now_ms=first, spacing_ms=spacing)
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, rows_for(messages, received_at=now))
        cursor = con.cursor()
        while keys.catch_up(cursor, limit=keys.KEYS_BATCH):
            pass
        con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.perf_counter() - started


PAGES = (
    "/", "/api/health", "/api/events", "/api/events?limit=500",
    "/api/events?type=kairo.door.*", "/api/events?source=device-007",
    "/api/events?since=1h&type=kairo.sensor.temp", "/api/tail", "/api/tail?after={last}",
    "/api/dead-letters", "/api/chart?range=1h", "/api/chart?range=6h", "/api/chart?range=24h",
    "/api/chart?range=7d", "/api/chart?range=30d",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning", format="console"))
    console.CHART_TTL = 0.0  # every chart GET counts the index range
    token = "bench-token-0123456789"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_path = root / "kairo.db"
        port = free_port()
        env = {"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
               "KAIRO_SIDECAR_HTTP__LISTEN": f"127.0.0.1:{port}",
               "KAIRO_SIDECAR_HTTP__TOKEN": token}
        db = open_database(load_config(environ=env).database)
        migrate(db)
        db.close()
        seeded_s = seed_recent(db_path, args.events, args.hours)
        with sidecar_thread(root / "broker", env):
            rows = []
            base = f"http://127.0.0.1:{port}"
            last = sqlite3.connect(db_path).execute("SELECT max(seq) FROM events").fetchone()[0]
            time_gets(base + "/api/events", 3, token=token)  # warm up
            before = written_bytes() or 0
            for page in PAGES:
                path = page.format(last=last)
                times, size = time_gets(base + path, args.rounds, token=token)
                rows.append((path, statistics.median(times), percentile(times, 95), size))
            written = (written_bytes() or 0) - before
    print(f"{args.events:,} events over the last {args.hours:g} h (seeded in {seeded_s:.0f} s), "
          f"{args.rounds} GETs per page, client included, chart uncached")
    print("| page | median ms | p95 ms | bytes |")
    print("|---|---:|---:|---:|")
    for page, median, p95, size in rows:
        print(f"| `{page}` | {median:.1f} | {p95:.1f} | {size:,} |")
    print(f"bytes written by the process during the GETs: {written:,}")


if __name__ == "__main__":
    main()
