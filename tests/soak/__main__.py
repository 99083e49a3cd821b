"""Run the soak: each phase gets a fresh persistent Mosquitto (loopback, free port), a fresh
sidecar process and database, runs one fault scenario at full size, and ends with an exact count
and a duplicate check. Prints a table, writes the figures as JSON (``--out``), exits 0 only if
every phase lost and duplicated nothing.

Phases (full size; ``--quick`` divides the event counts by ten):

  sigkill_storm                   100,000 events, 20 SIGKILLs at seeded random instants
  broker_restarts                  20,000 events, broker restarted 3 times
  broker_restarts_with_sidecar_kill 20,000 events, broker restarted 3 times, sidecar SIGKILLed with it
  broker_outage                    10,000 events, broker stopped for 30 s
  network_cut                      10,000 events, link silently cut for 20 s (keepalive 5 s)
  locked_database                  10,000 events, write lock held 15 s (busy timeout 5 s)
  locked_database_with_kill        the same, sidecar SIGKILLed before the lock goes
  disk_full                        20,000 events, 64 MiB tmpfs filled twice (needs root)
  sigterm_under_load               50,000 events at full speed, SIGTERM a third of the way
  bad_input                        50,000 malformed payloads + 20,000 valid events (+ mutations)
  request_flood                    5,000 replay requests + 5,000 hostile requests during ingest

Run heavy things one at a time on a shared machine: ``flock /tmp/kairo-heavy.lock python -m
tests.soak``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import ROOT, SidecarProcess
from tests.support import scenarios
from tests.support.broker import Broker, start_broker
from tests.support.faultkit import Outcome, SmallFilesystem, sidecar_env
from tests.support.netproxy import NetworkProxy

MAX_PAYLOAD = 8192
DEAD_LETTER_CAP = 4096


class Phase:
    """One scenario at a size: a fresh broker and sidecar in ``workdir``."""

    def __init__(self, workdir: Path, scale: float, seed: int, events: int | None,
                 kills: int) -> None:
        self.workdir = workdir
        self.scale = scale
        self.seed = seed
        self.events_override = events
        self.kills = kills

    def n(self, events: int) -> int:
        return max(500, int(events * self.scale))

    def run(self, name: str, body: Callable[[Broker, SidecarProcess, Path], Outcome],
            **overrides: object) -> Outcome:
        tmp = self.workdir / name
        tmp.mkdir(parents=True)
        broker = start_broker(tmp / "broker", persistence=True)
        sidecar: SidecarProcess | None = None
        try:
            sidecar = SidecarProcess(tmp, broker, **sidecar_env(**overrides))
            result: Outcome = body(broker, sidecar, tmp)
            if sidecar.proc is not None and sidecar.proc.poll() is None:
                code = sidecar.terminate(timeout=60)
                result.notes.setdefault("final_exit_code", code)
            return result
        finally:
            if sidecar is not None:
                sidecar.close()
            broker.close()


def _phases(p: Phase) -> dict[str, Callable[[], Outcome]]:
    seed = p.seed

    def storm() -> Outcome:
        events = p.events_override or p.n(100_000)
        rate = max(500.0, events / max(30.0, p.kills * 2.5))
        return p.run("sigkill_storm", lambda b, s, _: scenarios.kill_storm(
            b, s.start(), events=events, kills=p.kills, seed=seed, rate=rate))

    def restarts(kill: bool) -> Callable[[], Outcome]:
        name = "broker_restarts" + ("_with_sidecar_kill" if kill else "")
        return lambda: p.run(name, lambda b, s, _: scenarios.broker_restarts(
            b, s.start(), events=p.n(20_000), restarts=3, kill_sidecar=kill, seed=seed + 1,
            rate=1000), writer__queue_size=1500, writer__flush_interval=2)

    def outage() -> Outcome:
        return p.run("broker_outage", lambda b, s, _: scenarios.broker_outage(
            b, s.start(), events=p.n(10_000), down_for=30, rate=500))

    def cut() -> Outcome:
        def body(b: Broker, s: SidecarProcess, _: Path) -> Outcome:
            with NetworkProxy(b.port) as proxy:
                s.env["KAIRO_SIDECAR_MQTT__PORT"] = str(proxy.port)
                return scenarios.network_cut(proxy, b, s.start(), events=p.n(10_000),
                                             cut_for=20, rate=500)
        return p.run("network_cut", body, mqtt__keepalive=5)

    def locked(kill: bool) -> Callable[[], Outcome]:
        name = "locked_database" + ("_with_kill" if kill else "")
        return lambda: p.run(name, lambda b, s, _: scenarios.locked_database(
            b, s.start(), events=p.n(10_000), hold_for=15, kill_while_locked=kill, rate=500),
            writer__retry_max_delay=2)

    def full() -> Outcome:
        reason = SmallFilesystem.unavailable(p.workdir)
        if reason:
            result = Outcome("disk_full", events=0)
            result.notes["skipped"] = reason
            return result

        def body(b: Broker, s: SidecarProcess, tmp: Path) -> Outcome:
            with SmallFilesystem(tmp / "small-fs", size=64 << 20) as fs:
                s.db_path = fs.path / "kairo.db"
                s.env["KAIRO_SIDECAR_DATABASE__URL"] = f"sqlite:///{s.db_path}"
                result = scenarios.disk_full(fs, b, s.start(), events=p.n(20_000), full_for=5,
                                             rate=500)
                s.terminate(timeout=60)
                return result
        return p.run("disk_full", body, writer__retry_max_delay=1)

    def sigterm() -> Outcome:
        return p.run("sigterm_under_load", lambda b, s, _: scenarios.sigterm_under_load(
            b, s.start(), events=p.n(50_000), shutdown_timeout=10))

    def bad() -> Outcome:
        return p.run("bad_input", lambda b, s, _: scenarios.bad_input(
            b, s.start(), seed=seed, malformed=p.n(50_000), valid=p.n(20_000),
            max_payload_bytes=MAX_PAYLOAD, dead_letter_max_bytes=DEAD_LETTER_CAP),
            ingest__max_payload_bytes=MAX_PAYLOAD, ingest__dead_letter_max_bytes=DEAD_LETTER_CAP)

    def flood() -> Outcome:
        return p.run("request_flood", lambda b, s, _: scenarios.request_flood(
            b, s.start(), seed=seed, events=p.n(20_000), junk=p.n(5000), replays=p.n(5000)))

    return {
        "sigkill_storm": storm, "broker_restarts": restarts(False),
        "broker_restarts_with_sidecar_kill": restarts(True), "broker_outage": outage,
        "network_cut": cut, "locked_database": locked(False),
        "locked_database_with_kill": locked(True), "disk_full": full,
        "sigterm_under_load": sigterm, "bad_input": bad, "request_flood": flood,
    }


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the events (a smoke run)")
    parser.add_argument("--only", default="", help="comma-separated phases (default: all)")
    parser.add_argument("--events", type=int, help="events of the SIGKILL storm (default 100000)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in the storm (default 20)")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"),
                        help="where the figures go (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="kairo-soak-"))
    phase = Phase(workdir, 0.1 if args.quick else 1.0, args.seed, args.events,
                  max(1, args.kills // 4) if args.quick else args.kills)
    phases = _phases(phase)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(phases)
    unknown = [n for n in chosen if n not in phases]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; choose from {', '.join(phases)}")

    started = time.monotonic()
    results: list[Outcome] = []
    print(f"soak: {len(chosen)} phases, work directory {workdir}", flush=True)
    for name in chosen:
        print(f"-- {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            result = phases[name]()
        except Exception as exc:  # a phase that breaks is a failed phase, not a crashed soak
            result = Outcome(name, events=0, lost=-1)
            result.notes["error"] = "".join(traceback.format_exception(exc))[-4000:]
        result.seconds = round(time.monotonic() - t0, 1)
        results.append(result)
        print(f"   {_row(result)}", flush=True)

    ok = all(r.ok or r.notes.get("skipped") for r in results)
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m tests.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "ok": ok,
        "seconds": round(time.monotonic() - started, 1),
        "totals": {
            "events": sum(r.events for r in results),
            "kills": sum(r.kills for r in results),
            "broker_restarts": sum(r.broker_restarts for r in results),
            "lost": sum(max(r.lost, 0) for r in results),
            "duplicated": sum(r.duplicated for r in results),
            "unexpected": sum(r.unexpected for r in results),
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version,
                    "mosquitto": _version([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"]),
                    "platform": platform.platform()},
        "phases": [asdict(r) for r in results],
    }
    print()
    print(f"{'phase':36} {'events':>8} {'stored':>8} {'lost':>5} {'dup':>4} {'kills':>5} "
          f"{'restarts':>8} {'s':>7}")
    for r in results:
        print(_row(r))
    t = summary["totals"]
    print(f"{'TOTAL':36} {t['events']:>8} {'':>8} {t['lost']:>5} {t['duplicated']:>4} "  # type: ignore[index]
          f"{t['kills']:>5} {t['broker_restarts']:>8} {summary['seconds']:>7}")  # type: ignore[index]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\n{'OK' if ok else 'FAILED'}; figures in {out}")
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}")
    return 0 if ok else 1


def _row(r: Outcome) -> str:
    if r.notes.get("skipped"):
        return f"{r.name:36} skipped: {r.notes['skipped']}"
    if r.notes.get("error"):
        return f"{r.name:36} ERROR: {r.notes['error'].strip().splitlines()[-1]}"
    return (f"{r.name:36} {r.events:>8} {r.stored:>8} {r.lost:>5} {r.duplicated:>4} {r.kills:>5} "
            f"{r.broker_restarts:>8} {r.seconds:>7}" + ("" if r.ok else "  <-- FAILED"))


if __name__ == "__main__":
    sys.exit(main())
