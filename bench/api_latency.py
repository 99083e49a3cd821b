"""Request API round trips and replay throughput through a real Mosquitto.

Usage: python -m bench.api_latency [--events 200000] [--rounds 50] [--broker-nodelay]

Seeds ``--events`` events (about 300 bytes each, five types, half with one of events/20
correlation ids) into a fresh database, runs the sidecar in-process against a loopback
Mosquitto (needs the ``mosquitto`` binary; started like the tests do), and times requests made
with ``sidecar.client`` over MQTT 5: the median and 95th percentile of ``--rounds`` round trips
per request kind, then full replays (events/s, client included).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import time_calls
from bench.inprocess import sidecar_thread
from sidecar.client import SidecarClient
from sidecar.config import LogConfig, load_config
from sidecar.logs import configure_logging
from sidecar.storage import keys
from sidecar.storage.db import migrate, open_database

KINDS = ["user.message", "sensor.temp", "door.open", "audit.login", "alert"]


def seed(path: Path, n: int) -> None:
    rnd = random.Random(7)
    now = 1_790_000_000_000
    rows = []
    for i in range(n):
        kind = rnd.choice(KINDS)
        corr = f"wf-{rnd.randrange(n // 20 + 1)}" if rnd.random() < 0.5 else None
        rows.append((f"ev-{i:08d}", f"kairo/{kind.replace('.', '/')}", f"kairo.{kind}", "bench",
                     json.dumps({"i": i, "session_id": f"s{i % 1000}", "text": "x" * 150}),
                     json.dumps({"correlationId": corr}), now + i, now + i, corr))
    con = sqlite3.connect(path)
    with con:
        con.executemany("INSERT INTO events (id, topic, type, source, payload, metadata, "
                        "created_at, received_at, correlation_id) VALUES (?,?,?,?,?,?,?,?,?)",
                        rows)
        keys.catch_up(con.cursor())  # their keys too, as the daemon would have indexed them
    con.close()


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, float]:
    times = sorted(time_calls(fn, rounds))
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--broker-nodelay", action="store_true",
                        help="run Mosquitto with set_tcp_nodelay true (recommended)")
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning", format="console"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_path = root / "kairo.db"
        env = {"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}"}
        db = open_database(load_config(environ=env).database)
        migrate(db)
        db.close()
        seed(db_path, args.events)
        n = args.events
        mid = n // 2
        nodelay = "set_tcp_nodelay true\n" if args.broker_nodelay else ""
        with (sidecar_thread(root / "broker", env, extra_conf=nodelay,
                             ready_timeout=30) as (broker, _),
              SidecarClient(broker.host, broker.port) as client):
            cases: list[tuple[str, Callable[[], Any]]] = [
                ("stats", client.stats),
                ("get by id", lambda: client.get(f"ev-{mid:08d}")),
                ("query limit 100 (no filter, mid cursor)",
                 lambda: client.query(limit=100, after=mid)),
                ("query limit 1000 (no filter, mid cursor)",
                 lambda: client.query(limit=1000, after=mid)),
                ("query correlation_id", lambda: client.query(correlation_id="wf-17")),
                ("query type exact, limit 100, mid cursor",
                 lambda: client.query(type="kairo.alert", limit=100, after=mid)),
                ("query type glob, limit 100, mid cursor",
                 lambda: client.query(type="kairo.user.*", limit=100, after=mid)),
                ("query where payload.session_id, limit 100",
                 lambda: client.query(where={"payload.session_id": "s5"}, limit=100)),
                ("query topic kairo/+/temp, limit 100",
                 lambda: client.query(topic="kairo/+/temp", limit=100)),
            ]
            print(f"{n:,} events; {args.rounds} round trips each (ms); broker "
                  f"set_tcp_nodelay {'true' if args.broker_nodelay else 'false'}")
            print("| request | median | p95 |\n|---|---:|---:|")
            for name, fn in cases:
                median, p95 = timed(fn, args.rounds)
                print(f"| {name} | {median:.1f} | {p95:.1f} |")
            for batch in (100, 1000):
                started = time.perf_counter()
                count = sum(1 for _ in client.replay(batch=batch))
                seconds = time.perf_counter() - started
                print(f"| replay all, batch {batch} | {count:,} events in {seconds:.2f}s | "
                      f"{count / seconds:,.0f} events/s |")


if __name__ == "__main__":
    main()
