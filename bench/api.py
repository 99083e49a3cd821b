"""Scenarios on a big database: cold start (9), queries (5) and replay (6).

The database is seeded straight into SQLite (``events.seed_database``: each message decoded as
the daemon does, inserted with the writer's SQL, 50,000-row transactions): pushing 1,000,000
events through MQTT first would only make the run slower (the soak scenario does that part).
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.api.protocol import QueryRequest
from sidecar.client import SidecarClient
from sidecar.config import DatabaseConfig
from sidecar.storage import cleanstop
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader

from .events import BASE_TS, SPACING_MS, seed_database
from .harness import Report, fmt, interleave, percentile
from .ingest import Env, migrated_db
from .procs import Sidecar, wall_iso_to_mono_ns


def seeded(env: Env, n: int, report: Report) -> Path:
    """A migrated database holding ``n`` seeded events (cleanly closed: no WAL)."""
    path = migrated_db(env.workdir("seeded") / "kairo.db")
    seconds = seed_database(path, n)
    report.notes.append(f"{fmt(n)} events seeded straight into SQLite with the writer's INSERT "
                        f"(fast path, not through MQTT) in {seconds:.0f} s; "
                        f"{path.stat().st_size / n:.0f} bytes/event on disk")
    return path


# These runs need no backlog: the broker forgets the session at disconnect (else it would queue
# the later scenarios' events for it).
_NO_SESSION = {"mqtt__session_expiry": "0"}


def _sidecar_on(env: Env, db: Path, name: str) -> Sidecar:
    work = env.workdir(name)
    shutil.copy(db, work / "kairo.db")
    return Sidecar(work, env.port, env.client_id(name), overrides=dict(_NO_SESSION))


# ---------------------------------------------------------------------------------- 9 cold start
def cold_start(env: Env, report: Report, big: Path, n: int, rounds: int) -> None:
    """Process start to ``sidecar_ready`` (database checked and migrated, subscribed) on the
    ``n``-event database, against the same on an empty database. The default start-up check
    (``auto``) reads the whole file only after an unclean stop, so the big database is started
    both ways: after a clean stop (the record ``storage.cleanstop`` leaves; the usual restart)
    and after a crash (no record: the whole-file ``quick_check`` runs)."""
    empty = migrated_db(env.workdir("empty") / "kairo.db")
    report.params.update(events=n, rounds=rounds)
    big_copy = _sidecar_on(env, big, "cold")  # one copy, reused: starting does not change it

    def start(variant: str, sc: Sidecar, *, crashed: bool = False) -> None:
        if crashed:  # what a SIGKILL or power cut leaves: no clean-stop record
            cleanstop.record_path(sc.db_path).unlink(missing_ok=True)
        sc.client_id = env.client_id("cold")
        sc.start()
        ready = sc.wait_log("sidecar_ready")
        t_ready = wall_iso_to_mono_ns(ready["timestamp"])
        events = {e["event"]: e for e in sc.log_events()}
        check = events.get("integrity_checked", {}).get("seconds", 0.0)
        starting = events.get("sidecar_starting")
        if sc.stop():
            raise RuntimeError("the daemon did not stop cleanly")
        report.add(variant, seconds=(t_ready - sc.started_ns) / 1e9,
                   check_seconds=check,
                   to_starting=(wall_iso_to_mono_ns(starting["timestamp"]) - sc.started_ns) / 1e9
                   if starting else None)

    empty_sc = Sidecar(empty.parent, env.port, env.client_id("cold-empty"), overrides=_NO_SESSION)
    start("warm-up", big_copy, crashed=True)  # leaves the clean-stop record the next start reads
    interleave(rounds, {"big": lambda r: start("big", big_copy),
                        "big after a crash": lambda r: start("big after a crash", big_copy,
                                                              crashed=True),
                        "empty": lambda r: start("empty", empty_sc)})
    big_s, empty_s = report.median("big", "seconds"), report.median("empty", "seconds")
    crash_s = report.median("big after a crash", "seconds")
    ratio = report.ratio("big / empty", big_s, empty_s)
    report.ratio("big after a crash / empty", crash_s, empty_s)
    report.row(f"process start to ready, {fmt(n)} events, after a clean stop", f"{big_s:.2f} s",
               f"{ratio:.2f}x empty")
    report.row(f"process start to ready, {fmt(n)} events, after a crash (whole-file check)",
               f"{crash_s:.2f} s", f"{crash_s / empty_s:.2f}x empty")
    report.row("process start to ready, empty database (baseline)", f"{empty_s:.2f} s", "1.00x")
    check = report.median("big after a crash", "check_seconds")
    if check == check:
        report.row(f"of which the integrity check after a crash ({fmt(n)} events)", f"{check:.2f} s")
    report.target(f"process start to ready, {fmt(n)} events", big_s, "<=", 1.0, unit=" s")


# ---------------------------------------------------------------------------------- 5 queries
def _sample(db: Path) -> dict[str, Any]:
    """Values to query for, taken from the seeded data (deterministic)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n = con.execute("SELECT max(seq) FROM events").fetchone()[0]
        mid = n // 2
        rnd = random.Random(5)
        ids = [con.execute("SELECT id FROM events WHERE seq = ?", (rnd.randrange(1, n + 1),))
               .fetchone()[0] for _ in range(200)]
        corr = con.execute("SELECT correlation_id FROM events WHERE seq >= ? AND correlation_id "
                           "IS NOT NULL LIMIT 1", (mid,)).fetchone()[0]
        trace = con.execute("SELECT trace_id FROM events WHERE seq >= ? AND trace_id IS NOT NULL "
                            "LIMIT 1", (mid,)).fetchone()[0]
    finally:
        con.close()
    return {"n": n, "mid": mid, "ids": ids, "correlation_id": corr, "trace_id": trace}


def query_cases(sample: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(name, query body, indexed?) -- every filter kind, 100-event pages."""
    mid_ts = BASE_TS + sample["mid"] * SPACING_MS
    return [
        ("type exact, common (30 %)", {"type": "kairo.sensor.temp"}, True),
        ("type exact, common, page from the middle", {"type": "kairo.sensor.temp",
                                                       "after": sample["mid"]}, True),
        ("type exact, rare (1 %)", {"type": "kairo.audit.login"}, True),
        ("type glob kairo.user.* (15 %)", {"type": "kairo.user.*"}, True),
        ("time range, 1 minute in the middle", {"since": mid_ts, "until": mid_ts + 60_000}, True),
        ("correlation id (~5 events)", {"correlation_id": sample["correlation_id"]}, True),
        ("trace id", {"trace_id": sample["trace_id"]}, True),
        ("source (1 of 50, no index)", {"source": "device-017"}, False),
        ("where payload.room (1 of 8, no index)", {"where": {"payload.room": "kitchen"}}, False),
        ("no filter, page from the middle", {"after": sample["mid"]}, True),
    ]


def queries(env: Env, report: Report, big: Path, rounds: int, *,
            replay_events: int, replay_rounds: int) -> None:
    """Round trips over MQTT (``sidecar.client``) per filter kind, against the same page read
    straight from SQLite in this process (the storage floor), interleaved; then replay (6)."""
    sample = _sample(big)
    report.params.update(events=sample["n"], rounds=rounds, page=100)
    sc = _sidecar_on(env, big, "queries")
    sc.start()
    sc.wait_log("sidecar_ready")
    reader = Reader(open_reader(DatabaseConfig(url=f"sqlite:///{sc.db_path}")))
    cases = query_cases(sample)
    timings: dict[str, dict[str, list[float]]] = {}
    try:
        with SidecarClient("127.0.0.1", env.port, timeout=30) as client:
            def over_mqtt(body: dict[str, Any]) -> Callable[[], Any]:
                return lambda: client.query(limit=100, **body)

            def direct(body: dict[str, Any]) -> Callable[[], Any]:
                request = QueryRequest(**body)
                cond = conditions(request)
                return lambda: reader.page(cond, limit=101)

            ids = sample["ids"]
            kinds: list[tuple[str, Callable[[int], Any], Callable[[int], Any], bool]] = [
                (name, (lambda f: lambda i: f())(over_mqtt(body)),
                 (lambda f: lambda i: f())(direct(body)), indexed)
                for name, body, indexed in cases]
            kinds.append(("get by id", lambda i: client.get(ids[i % len(ids)]),
                          lambda i: reader.get(ids[i % len(ids)]), True))
            for name, *_ in kinds:
                timings[name] = {"mqtt": [], "sqlite": []}
            for _, mqtt_fn, sqlite_fn, _ in kinds:  # warm the caches once
                mqtt_fn(0)
                sqlite_fn(0)
            for r in range(rounds):
                for name, mqtt_fn, sqlite_fn, _ in kinds:
                    order = [("mqtt", mqtt_fn), ("sqlite", sqlite_fn)]
                    for variant, fn in (order if r % 2 == 0 else order[::-1]):
                        t = time.perf_counter()
                        fn(r)
                        timings[name][variant].append((time.perf_counter() - t) * 1000)
            replay(env, report, client, sample, replay_events, replay_rounds)
    finally:
        reader.close()
        if sc.stop():
            raise RuntimeError("the daemon did not stop cleanly")
    worst_p50 = worst_p99 = 0.0
    for name, _, _, indexed in kinds:
        times = timings[name]
        p50, p99 = percentile(times["mqtt"], 50), percentile(times["mqtt"], 99)
        s50 = percentile(times["sqlite"], 50)
        report.add(name, p50_ms=p50, p99_ms=p99, sqlite_p50_ms=s50, indexed=indexed)
        report.row(f"{name}: p50 / p99", f"{p50:.1f} / {p99:.1f} ms",
                   f"SQLite alone {s50:.2f} ms")
        if name == "get by id":
            report.target("get by id p50", p50, "<=", 3, unit=" ms")
        elif indexed:
            worst_p50, worst_p99 = max(worst_p50, p50), max(worst_p99, p99)
    report.target("worst indexed filter p50", worst_p50, "<=", 5, unit=" ms")
    report.target("worst indexed filter p99", worst_p99, "<=", 20, unit=" ms")


# ---------------------------------------------------------------------------------- 6 replay
def replay(env: Env, report: Report, client: SidecarClient, sample: dict[str, Any], n: int,
           rounds: int) -> None:
    """``n`` events (the newest ones) replayed in batches of 100 to this QoS 1 subscriber,
    against reading the same events with query pages of 1000 (``query_all``)."""
    after = max(0, sample["n"] - n)
    rates: dict[str, list[float]] = {"replay": [], "pages": []}

    def run_replay(r: int) -> None:
        t = time.perf_counter()
        count = sum(1 for _ in client.replay(batch=100, after=after))
        if count != n:
            raise RuntimeError(f"replay sent {count} of {n}")
        rates["replay"].append(n / (time.perf_counter() - t))

    def run_pages(r: int) -> None:
        t = time.perf_counter()
        count = sum(1 for _ in client.query_all(limit=1000, after=after))
        if count != n:
            raise RuntimeError(f"query pages gave {count} of {n}")
        rates["pages"].append(n / (time.perf_counter() - t))

    interleave(rounds, {"replay": run_replay, "pages": run_pages})
    report.extra["replay"] = {"events": n, "batch": 100, "rounds": rounds, "rates": rates}
    rep = percentile(rates["replay"], 50)
    pages = percentile(rates["pages"], 50)
    report.add("replay", replay_rate=rep, pages_rate=pages)
    report.row(f"replay of {fmt(n)} events, batch 100, to a QoS 1 subscriber", f"{fmt(rep)} ev/s",
               f"{rep / pages:.2f}x query pages")
    report.row("the same events read with query pages of 1000 (baseline)", f"{fmt(pages)} ev/s")
    report.target(f"replay of {fmt(n)} events, batch 100, to a QoS 1 subscriber", rep, ">=", 50_000,
                  unit=" ev/s")
