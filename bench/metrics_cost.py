"""What the HTTP listener and Home Assistant state cost: /metrics and /healthz round trips,
the bytes a scrape causes to be written, and one Home Assistant state (a COUNT of the events).

Usage: python -m bench.metrics_cost [--events 200000] [--rounds 200]

Seeds ``--events`` events into a fresh database (as ``bench.api_latency``), runs the sidecar
in-process against a loopback Mosquitto with ``[http] listen`` on, then times ``--rounds``
GETs of each page with ``urllib`` (client included) and reads ``write_bytes`` of
``/proc/self/io`` around them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.api_latency import seed
from bench.harness import percentile, time_calls, time_gets
from bench.inprocess import sidecar_thread
from sidecar.config import LogConfig, load_config
from sidecar.http.metrics import written_bytes
from sidecar.logs import configure_logging
from sidecar.storage.db import migrate, open_database
from tests.support.broker import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning", format="console"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_path = root / "kairo.db"
        port = free_port()
        env = {"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
               "KAIRO_SIDECAR_HTTP__LISTEN": f"127.0.0.1:{port}"}
        db = open_database(load_config(environ=env).database)
        migrate(db)
        db.close()
        seed(db_path, args.events)
        with sidecar_thread(root / "broker", env, ready_timeout=30) as (_, sidecar):
            base = f"http://127.0.0.1:{port}"
            time_gets(base + "/metrics", 5, timeout=10)  # warm up
            before = written_bytes() or 0
            rows = []
            for page in ("/metrics", "/healthz"):
                times, size = time_gets(base + page, args.rounds, timeout=10)
                rows.append((page, statistics.median(times), percentile(times, 95), size))
            written = (written_bytes() or 0) - before
            announcer = sidecar.announcer
            assert announcer is not None
            state_ms = time_calls(announcer.state, 5)
    print(f"{args.events} events in the database, {args.rounds} GETs per page (client included)")
    print("| page | median ms | p95 ms | bytes |")
    print("|---|---:|---:|---:|")
    for page, median, p95, size in rows:
        print(f"| {page} | {median:.2f} | {p95:.2f} | {size} |")
    print(f"bytes written by the process during the {2 * args.rounds} GETs: {written}")
    print(f"Home Assistant state (COUNT of the events): median {statistics.median(state_ms):.1f} ms")


if __name__ == "__main__":
    main()
