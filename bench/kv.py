"""Key-value store round trips over MQTT (issue 12): kv/get and kv/put p50/p99.

Usage: python -m bench.kv [--rounds 300] [--keys 1000]   (or ``python -m bench run --only kv``)

The daemon runs as a process at default settings (group commit: a put is answered after an
fdatasync of the WAL) on a fresh database holding ``--keys`` keys, against a loopback Mosquitto;
``sidecar.client`` (MQTT 5) times, interleaved: ``kv/get`` of a random key, ``kv/put`` of a
~100-byte JSON value, ``kv/put`` with ``if_version`` (read-modify-write: get + put), and the
event ``get`` by id as the reference read. Then the same puts with ``[database] durability =
"none"`` (no sync of ours): what the sync costs a put.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.client import SidecarClient

from .harness import Report, fmt, interleave, percentile
from .ingest import Env, migrated_db
from .procs import Sidecar

_NO_SESSION = {"mqtt__session_expiry": "0"}


def _value(i: int) -> dict[str, Any]:
    return {"enabled": i % 2 == 0, "config": {"city": "Zurich", "n": i, "pad": "x" * 40}}


def _run(env: Env, name: str, keys: int, rounds: int, overrides: dict[str, str],
         cases: Callable[[SidecarClient, random.Random], dict[str, Callable[[], Any]]]
         ) -> dict[str, list[float]]:
    work = env.workdir(name)
    migrated_db(work / "kairo.db")
    sc = Sidecar(work, env.port, env.client_id(name), overrides={**_NO_SESSION, **overrides})
    sc.start()
    sc.wait_log("sidecar_ready")
    times: dict[str, list[float]] = {}
    try:
        with SidecarClient("127.0.0.1", env.port, timeout=30) as client:
            for k in range(keys):
                client.kv_put(f"bench/{k:05d}", _value(k))
            rnd = random.Random(7)
            variants = cases(client, rnd)

            def timed(label: str, fn: Callable[[], Any]) -> Callable[[int], None]:
                def run(_: int) -> None:
                    started = time.perf_counter()
                    fn()
                    times.setdefault(label, []).append((time.perf_counter() - started) * 1000)
                return run

            interleave(rounds, {label: timed(label, fn) for label, fn in variants.items()})
    finally:
        sc.stop()
    return times


def kv(env: Env, report: Report, rounds: int, keys: int = 1000) -> None:
    """kv/get and kv/put round trips (p50/p99 ms) at default settings; puts without the sync."""
    report.params.update(rounds=rounds, keys=keys)

    def default_cases(client: SidecarClient, rnd: random.Random) -> dict[str, Callable[[], Any]]:
        counter = iter(range(10**9))
        client.kv_put("bench/rmw", 0)
        event_id = client.query(limit=1).events[0]["id"]

        def rmw() -> None:
            got = client.kv_get("bench/rmw")
            client.kv_put("bench/rmw", got["value"] + 1, if_version=got["version"])

        return {
            "kv/get": lambda: client.kv_get(f"bench/{rnd.randrange(keys):05d}"),
            "kv/put": lambda: client.kv_put(f"bench/{rnd.randrange(keys):05d}",
                                            _value(next(counter))),
            "kv/get + kv/put if_version": rmw,
            "get (event by id, reference)": lambda: client.get(event_id),
        }

    def put_only(client: SidecarClient, rnd: random.Random) -> dict[str, Callable[[], Any]]:
        counter = iter(range(10**9))
        return {"kv/put, durability none": lambda: client.kv_put(
            f"bench/{rnd.randrange(keys):05d}", _value(next(counter)))}

    timings = _run(env, "kv", keys, rounds, {}, default_cases)
    timings.update(_run(env, "kv-nosync", keys, rounds, {"database__durability": "none"},
                        put_only))
    base = percentile(timings["get (event by id, reference)"], 50)
    for label, values in timings.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        report.add(label, p50_ms=p50, p99_ms=p99)
        report.row(f"{label}: p50 / p99", f"{p50:.1f} / {p99:.1f} ms",
                   f"{p50 / base:.2f}x get" if base else "")
    report.notes.append(f"{fmt(keys)} keys, {rounds} round trips per kind, interleaved")


def main(argv: list[str] | None = None) -> int:
    from tests.support.broker import start_broker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kairo-bench-kv-"))
    broker = start_broker(root / "broker", extra_conf="set_tcp_nodelay true\n")
    env = Env(port=broker.port, broker_pid=0, root=root)
    report = Report("kv", "12 Key-value store", "kv/get and kv/put round trips over MQTT")
    try:
        kv(env, report, args.rounds, args.keys)
    finally:
        broker.close()
    for metric, value, ratio in report.rows:
        print(f"| {metric} | {value} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
