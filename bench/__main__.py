"""kairo-sidecar benchmark suite: one command, every scenario of issue 5, ratios to baselines.

    python -m bench run [--quick | --smoke] [--only drain,live,...] [--out bench/results]
                        [--profile]

Sizes: full (the issue's numbers: 100,000-event drains, 1,000,000-event database; ~10-15
minutes on 2 cores), ``--quick`` (a fifth to a tenth of that, ~2-3 minutes), ``--smoke`` (a few
hundred events; seconds: CI runs it so the harness cannot rot; its numbers mean nothing).
Results go to ``--out``: ``results-<size>-<time>.json`` (every run, medians, ratios, targets)
and ``.md`` (the table), also copied to ``latest-<size>.json|md``. ``--profile`` adds one drain
and one live run of the daemon under py-spy (collapsed stacks, ``pip install py-spy``; not in
the medians) into ``<out>/profiles/``; summarise one with ``python -m bench.profile FILE``.

Run heavy benchmarks alone on the machine (``flock /tmp/kairo-heavy.lock python -m bench run``):
every scenario also runs its baseline interleaved, but a second heavy job still skews both.
Scenarios: storage, sync, drain, live, latency, soak, cold, queries (with replay), wear (issue
11: bytes written per event at 10 and 100 events/s and at a drain, on a database already holding
1,000,000 events, 200,000 with ``--quick``; ``python -m bench run --only wear``).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import LogConfig
from sidecar.logs import configure_logging

from . import api, ingest, kv, storage, wear
from .harness import Report, Results
from .wear import Pace

SCENARIOS = ("storage", "sync", "drain", "live", "latency", "soak", "cold", "queries", "wear",
             "kv")


@dataclass(frozen=True)
class Size:
    drain: int
    live: int
    naive: int
    rounds: int
    latency_seconds: float
    latency_rounds: int
    storage: int
    sync: int
    sync_rounds: int
    soak: int
    soak_step: int
    big: int
    cold_rounds: int
    query_rounds: int
    replay: int
    replay_rounds: int
    wear_seed: int
    wear_paces: tuple[Pace, ...]
    wear_drain: int
    kv_rounds: int


SIZES = {
    "full": Size(drain=100_000, live=100_000, naive=5_000, rounds=3, latency_seconds=10,
                 latency_rounds=3, storage=100_000, sync=100_000, sync_rounds=3, soak=1_000_000,
                 soak_step=100_000, big=1_000_000, cold_rounds=5, query_rounds=200,
                 replay=100_000, replay_rounds=3, wear_seed=1_000_000,
                 wear_paces=(Pace(10, 120), Pace(100, 60)), wear_drain=100_000,
                 kv_rounds=500),
    "quick": Size(drain=20_000, live=20_000, naive=1_000, rounds=2, latency_seconds=4,
                  latency_rounds=2, storage=20_000, sync=20_000, sync_rounds=2, soak=100_000,
                  soak_step=20_000, big=100_000, cold_rounds=3, query_rounds=50,
                  replay=20_000, replay_rounds=2, wear_seed=200_000,
                  wear_paces=(Pace(10, 60), Pace(100, 30)), wear_drain=20_000,
                  kv_rounds=200),
    "smoke": Size(drain=300, live=300, naive=50, rounds=1, latency_seconds=0.5,
                  latency_rounds=1, storage=500, sync=500, sync_rounds=1, soak=600,
                  soak_step=300, big=2_000, cold_rounds=1, query_rounds=3,
                  replay=500, replay_rounds=1, wear_seed=2_000,
                  wear_paces=(Pace(10, 1), Pace(100, 0.5)), wear_drain=300,
                  kv_rounds=5),
}

DESCRIPTIONS = {
    "storage": ("4 Storage limit", "the daemon's Writer (pre-decoded rows queued up front) against "
                "sqlite3.executemany in 1,000-row transactions, same schema and pragmas"),
    "sync": ("10 synchronous levels", "the Writer at each [database] synchronous level, batches of "
             "500 (load) and 20 (a trickle); ratio to NORMAL"),
    "drain": ("1 Drain", "a backlog queued by the broker for the persistent session while the "
              "consumer is down; time from its MQTT connect to the last commit (receive-only: "
              "last message); the baseline is the fastest plain paho subscriber (MQTT 3.1.1, "
              "count and ack), MQTT 5 beside it"),
    "live": ("2 Live rate", "the consumer running; the publisher sends the batch as fast as the "
             "broker accepts; time from the first publish to the last commit (or receive)"),
    "latency": ("3 Latency", "fixed-rate publishing; publish to committed (visible to a reader, "
                "polled every 2 ms) per event"),
    "soak": ("7+8 Memory and disk wear", "events through MQTT into one daemon at default settings, "
             "in chunks: RSS after each chunk, /proc/<pid>/io write_bytes per stored event, "
             "file size per event"),
    "cold": ("9 Cold start", "process start to sidecar_ready (checked, migrated, subscribed)"),
    "wear": ("11 SD-card wear", "/proc/<pid>/io write_bytes per stored event of the daemon at "
             "default settings, on a database already holding the seeded events, under a paced "
             "QoS 1 publisher (~320-byte envelopes) and at a drain, with the clean stop's final "
             "checkpoint; the baseline: a typical paho+sqlite script, same seed and load"),
    "kv": ("12 Key-value store", "kv/get and kv/put round trips over MQTT with sidecar.client "
           "(MQTT 5) at default settings (a put is answered after the group commit's sync), "
           "interleaved with an event get by id as the reference; then puts with durability "
           "none"),
    "queries": ("5+6 Queries and replay", "round trips over MQTT with sidecar.client (MQTT 5), "
                "100-event pages, against the same page read straight from SQLite; replay "
                "events/s"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite (or --only some scenarios)")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="size")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="size")
    run.add_argument("--only", help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    run.add_argument("--out", default=str(Path(__file__).parent / "results"))
    run.add_argument("--profile", action="store_true",
                     help="py-spy profiles of the daemon (one extra drain and live run each)")
    run.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    size_name = args.size or "full"
    only = SCENARIOS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    configure_logging(LogConfig(level="error", format="console"))
    results = Results(command="python -m bench " + shlex.join(sys.argv[1:] if argv is None
                                                                else argv), size=size_name)
    ok = run_suite(results, SIZES[size_name], only, Path(args.out), profile=args.profile,
                   keep=args.keep)
    json_path, md_path = results.write(Path(args.out))
    print(results.markdown())
    print(f"results: {json_path}\n         {md_path}")
    return 0 if ok else 1


def run_suite(results: Results, size: Size, only: tuple[str, ...], out: Path, *,
              profile: bool = False, keep: bool = False) -> bool:
    from tests.support.broker import start_broker

    root = Path(tempfile.mkdtemp(prefix="kairo-bench-"))
    # max_inflight_messages: the window of an MQTT 3.1.1 subscriber (the receive-only baseline),
    # the same as the daemon's MQTT 5 Receive Maximum (its queue_size, 5000)
    broker = start_broker(root / "broker",
                          extra_conf="set_tcp_nodelay true\nmax_inflight_messages 5000\n")
    proc = getattr(broker._backend, "proc", None)
    env = ingest.Env(port=broker.port, broker_pid=proc.pid if proc is not None else 0,
                     root=root, profile_dir=out / "profiles" if profile else None)
    ok = True
    big: Path | None = None

    def scenario(key: str, fn: Callable[[Report], None]) -> None:
        nonlocal ok
        if key not in only:
            return
        title, description = DESCRIPTIONS[key]
        report = Report(key, title, description)
        results.reports.append(report)
        print(f"-- {title} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            fn(report)
        except Exception as exc:
            ok = False
            report.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        report.seconds = time.monotonic() - started
        print(f"   {report.seconds:.0f} s", file=sys.stderr, flush=True)

    def big_db(report: Report) -> Path:
        nonlocal big
        if big is None:
            big = api.seeded(env, size.big, report)
        return big

    try:
        scenario("storage", lambda r: storage.storage_limit(root, r, size.storage, size.rounds))
        scenario("sync", lambda r: storage.sync(root, r, size.sync, size.sync_rounds))
        scenario("drain", lambda r: ingest.drain(env, r, size.drain, size.rounds))
        scenario("live", lambda r: ingest.live(env, r, size.live, size.naive, size.rounds))
        scenario("latency", lambda r: ingest.latency(env, r, 2000.0, size.latency_seconds,
                                                     size.latency_rounds))
        scenario("soak", lambda r: ingest.soak(env, r, size.soak, size.soak_step))
        scenario("cold", lambda r: api.cold_start(env, r, big_db(r), size.big, size.cold_rounds))
        scenario("queries", lambda r: api.queries(env, r, big_db(r), size.query_rounds,
                                                  replay_events=min(size.replay, size.big),
                                                  replay_rounds=size.replay_rounds))
        smoke = {"writer__flush_interval": "0.5"} if size is SIZES["smoke"] else None
        scenario("wear", lambda r: wear.wear(env, r, seed_n=size.wear_seed,
                                             paces=size.wear_paces, drain_n=size.wear_drain,
                                             overrides=smoke))
        scenario("kv", lambda r: kv.kv(env, r, size.kv_rounds,
                                       keys=1000 if size.kv_rounds > 5 else 20))
    finally:
        broker.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"scratch directory kept: {root}", file=sys.stderr)
    return ok


if __name__ == "__main__":
    sys.exit(main())
