"""Key-value store round trips over MQTT (issue 12): kv/get and kv/put p50/p99.

Usage: python -m bench.kv [--rounds 300] [--keys 1000] [--load 100]   (or ``python -m bench run --only kv``)

The daemon runs as a process at default settings (group commit: a put is answered after an
fdatasync of the WAL) on a fresh database holding ``--keys`` keys, against a loopback Mosquitto;
``sidecar.client`` (MQTT 5) times, interleaved: ``kv/get`` of a random key, ``kv/put`` of a
~100-byte JSON value, ``kv/put`` with ``if_version`` (read-modify-write: get + put), and the
event ``get`` by id as the reference read. Then the same puts with ``[database] durability =
"none"`` (no sync of ours): what the sync costs a put. Then puts and gets again while events
stream in at ``--load`` events/s (100: the top of a Pi's rate), so a put waits for the batch
being collected (the writer ends it early) and its commit.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.client import SidecarClient

from .events import make_messages
from .harness import Report, fmt, interleave, percentile
from .ingest import Env, migrated_db
from .load import RawPublisher
from .procs import Sidecar

_NO_SESSION = {"mqtt__session_expiry": "0"}


def _value(i: int) -> dict[str, Any]:
    return {"enabled": i % 2 == 0, "config": {"city": "Zurich", "n": i, "pad": "x" * 40}}


class _Load:
    """Events published at ``rate``/s (QoS 1, paced, one second's worth at a time) from a
    thread until ``stop``; ``sent`` counts them."""

    def __init__(self, env: Env, rate: int) -> None:
        self._env, self._rate = env, rate
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._publish, name="bench-load", daemon=True)

    def _publish(self) -> None:
        with RawPublisher("127.0.0.1", self._env.port) as pub:
            second = 0
            while not self._stop.is_set():
                messages = make_messages(self._rate, seed=11, start=second * self._rate,
                                         now_ms=int(time.time() * 1000),
                                         spacing_ms=max(1, 1000 // self._rate))
                pub.paced(pub.packets(messages), self._rate)
                self.sent += len(messages)
                second += 1

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _run(env: Env, name: str, keys: int, rounds: int, overrides: dict[str, str],
         cases: Callable[[SidecarClient, random.Random], dict[str, Callable[[], Any]]],
         *, load: int = 0) -> dict[str, list[float]]:
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

            if load:
                with _Load(env, load) as running:
                    time.sleep(1.0)  # the stream under way
                    interleave(rounds, {label: timed(label, fn)
                                        for label, fn in variants.items()})
                if not running.sent:
                    raise RuntimeError("the load publisher sent nothing")
            else:
                interleave(rounds, {label: timed(label, fn) for label, fn in variants.items()})
    finally:
        sc.stop()
    return times


def kv(env: Env, report: Report, rounds: int, keys: int = 1000, load: int = 100) -> None:
    """kv/get and kv/put round trips (p50/p99 ms) at default settings; puts without the sync;
    gets and puts while ``load`` events/s stream in (0: not run)."""
    report.params.update(rounds=rounds, keys=keys, load=load)

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
    if load:
        def under_load(client: SidecarClient, rnd: random.Random) -> dict[str, Callable[[], Any]]:
            counter = iter(range(10**9))
            return {
                f"kv/get, {load} events/s streaming in": lambda: client.kv_get(
                    f"bench/{rnd.randrange(keys):05d}"),
                f"kv/put, {load} events/s streaming in": lambda: client.kv_put(
                    f"bench/{rnd.randrange(keys):05d}", _value(next(counter))),
            }

        timings.update(_run(env, "kv-load", keys, rounds, {}, under_load, load=load))
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
    parser.add_argument("--load", type=int, default=100,
                        help="events/s streaming in during the last run (0: skip it)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kairo-bench-kv-"))
    broker = start_broker(root / "broker", extra_conf="set_tcp_nodelay true\n")
    env = Env(port=broker.port, broker_pid=0, root=root)
    report = Report("kv", "12 Key-value store", "kv/get and kv/put round trips over MQTT")
    try:
        kv(env, report, args.rounds, args.keys, args.load)
    finally:
        broker.close()
    for metric, value, ratio in report.rows:
        print(f"| {metric} | {value} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
