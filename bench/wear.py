"""SD-card wear (issue 11): bytes written per stored event at Pi rates, on a big database.

Whatever the code on the branch does is measured: the daemon runs as a child process at its
DEFAULT settings (``python -m sidecar run``, nothing overridden but where the broker and the
file are) on a copy of a database that already holds ``seed`` events, created by the
migrations and filled by the fast path (``events.seed_database``: the writer's INSERT, no MQTT).
A paced QoS 1 publisher sends ~320-byte Kairo envelopes at each rate for a while; then a backlog
is drained. The baseline, in the same run on the same seed and load: the naive script as people
write it (``bench.subscribers`` mode ``typical``: ``json.loads`` + INSERT + commit per message,
``id TEXT PRIMARY KEY`` and indexes on correlation and trace ids, WAL, ``synchronous=NORMAL``).

Bytes written: ``write_bytes`` of ``/proc/<pid>/io`` (the page-cache bytes the process
dirtied, in whole 4 KiB pages, once per clean-to-dirty transition: what the card is sent),
from the daemon's ``sidecar_ready`` to its exit after a clean stop (final checkpoint included),
read while it is a zombie (``procs.exit_io``). Database copies are fsynced first, so every page
starts clean. fsyncs: ``strace -f -c`` attached from the first publish to the exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .events import BASE_TS, SPACING_MS, Message, make_messages, mean_size, seed_database
from .harness import Report, fmt
from .ingest import Env, _clean, migrated_db, publish
from .load import RawPublisher
from .procs import CommitWatcher, Sidecar, SyncCounter, exit_io, proc_io, run_baseline, settle
from .subscribers import TYPICAL_INSERT, open_typical, typical_row

DAY = 86_400
REQUIRED = 10.0  # x the event JSON, at every rate (issue 11)
GOAL = 3.0


@dataclass(frozen=True)
class Pace:
    rate: float  # events/s
    seconds: float

    @property
    def events(self) -> int:
        return int(self.rate * self.seconds)

    @property
    def name(self) -> str:
        return f"{fmt(self.rate)} ev/s for {self.seconds:g} s"


# --------------------------------------------------------------------------- the seeded files
def seeded_sidecar_db(path: Path, n: int) -> tuple[Path, float]:
    """The daemon's schema (its migrations) holding ``n`` events (the writer's INSERT)."""
    migrated_db(path)
    return path, seed_database(path, n, rich=True)


def seeded_typical_db(path: Path, n: int, *, chunk: int = 50_000) -> tuple[Path, float]:
    """The typical script's table holding the same ``n`` events (its own columns)."""
    started = time.perf_counter()
    con = open_typical(path)
    con.isolation_level = None
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -262144")
    for start in range(0, n, chunk):
        batch = make_messages(min(chunk, n - start), seed=11, start=start, rich=True)
        con.execute("BEGIN IMMEDIATE")
        con.executemany(TYPICAL_INSERT, [typical_row(m.topic, m.payload, _seed_ms(m))
                                         for m in batch])
        con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path, time.perf_counter() - started


def _seed_ms(m: Message) -> int:
    return BASE_TS + m.number * SPACING_MS  # as events.rows_for gives the daemon's seed


def _copy(template: Path, workdir: Path, name: str) -> Path:
    path = workdir / name
    shutil.copyfile(template, path)
    settle(path)
    return path


def _paced_messages(pace: Pace, seed: int) -> list[Message]:
    return make_messages(pace.events, seed=seed, now_ms=int(time.time() * 1000),
                         spacing_ms=max(1, int(1000 / pace.rate)), rich=True)


def _send_paced(env: Env, messages: list[Message], rate: float) -> float:
    """Publish at ``rate``; return the seconds from the first publish to the last PUBACK."""
    started = time.monotonic()
    with RawPublisher("127.0.0.1", env.port) as pub:
        pub.paced(pub.packets(messages), rate)
    return time.monotonic() - started


# --------------------------------------------------------------------------- one run each
def _sidecar_paced(env: Env, template: Path, seed_n: int, pace: Pace, seed: int,
                   overrides: dict[str, str]) -> dict[str, Any]:
    work = env.workdir("wear")
    db = _copy(template, work, "kairo.db")
    messages = _paced_messages(pace, seed)
    sc = Sidecar(work, env.port, env.client_id("wear"), overrides=overrides)
    sc.start()
    sc.wait_log("sidecar_ready")
    pid = sc.pid
    at_ready = proc_io(pid)
    log_size = sc.log_path.stat().st_size
    syncs = SyncCounter(pid, work / "strace.txt").start()
    watcher = CommitWatcher(db)
    seconds = _send_paced(env, messages, pace.rate)
    watcher.wait_for(seed_n + len(messages), timeout=120, alive=sc.proc)
    at_exit = _stop(sc)
    stored = watcher.count() - seed_n
    watcher.close()
    _clean(env, sc.client_id)
    if stored != len(messages):
        raise RuntimeError(f"wear: {stored} events stored, expected exactly {len(messages)}")
    return _measured(messages, at_exit, at_ready, seconds, syncs.result(),
                     startup_bytes=at_ready.get("write_bytes", 0),
                     log_bytes=sc.log_path.stat().st_size - log_size)


def _typical_paced(env: Env, template: Path, pace: Pace, seed: int) -> dict[str, Any]:
    work = env.workdir("wear-typical")
    db = _copy(template, work, "typical.db")
    messages = _paced_messages(pace, seed)
    cid = env.client_id("wear-typical")
    run_baseline("prepare", env.port, cid)
    proc = run_baseline("typical", env.port, cid, count=len(messages), db=db,
                        out=work / "out.json", wait=False)
    time.sleep(0.5)  # let it connect and open the file (its session already queues for it)
    syncs = SyncCounter(proc.pid, work / "strace.txt").start()
    seconds = _send_paced(env, messages, pace.rate)
    at_exit = exit_io(proc, timeout=300)
    _clean(env, cid)
    if proc.returncode:
        raise RuntimeError(f"typical script exited {proc.returncode}")
    _check_typical(db, template, len(messages))
    return _measured(messages, at_exit, {}, seconds, syncs.result())


def _sidecar_drain(env: Env, template: Path, seed_n: int, n: int, seed: int,
                   overrides: dict[str, str]) -> dict[str, Any]:
    work = env.workdir("wear-drain")
    db = _copy(template, work, "kairo.db")
    sc = Sidecar(work, env.port, env.client_id("wear-drain"), overrides=overrides)
    sc.start()  # once, to make the session; the broker then queues the backlog for it
    sc.wait_log("sidecar_ready")
    _stop(sc)
    settle(db, Path(f"{db}-wal"))  # what that run dirtied is clean before the measured one
    messages = make_messages(n, seed=seed, now_ms=int(time.time() * 1000), spacing_ms=0,
                             rich=True)
    publish(env, messages)
    watcher = CommitWatcher(db)
    started = time.monotonic()
    sc.start()
    watcher.wait_for(seed_n + n, timeout=600, alive=sc.proc)
    seconds = time.monotonic() - started
    at_exit = _stop(sc)
    stored = watcher.count() - seed_n
    watcher.close()
    _clean(env, sc.client_id)
    if stored != n:
        raise RuntimeError(f"wear drain: {stored} events stored, expected exactly {n}")
    return _measured(messages, at_exit, {}, seconds, None)


def _typical_drain(env: Env, template: Path, n: int, seed: int) -> dict[str, Any]:
    work = env.workdir("wear-typical-drain")
    db = _copy(template, work, "typical.db")
    cid = env.client_id("wear-typical-drain")
    run_baseline("prepare", env.port, cid)
    messages = make_messages(n, seed=seed, now_ms=int(time.time() * 1000), spacing_ms=0,
                             rich=True)
    publish(env, messages)
    started = time.monotonic()
    proc = run_baseline("typical", env.port, cid, count=n, db=db, out=work / "out.json",
                        wait=False, timeout=900)
    at_exit = exit_io(proc, timeout=900)
    seconds = time.monotonic() - started
    _clean(env, cid)
    if proc.returncode:
        raise RuntimeError(f"typical script exited {proc.returncode}")
    _check_typical(db, template, n)
    return _measured(messages, at_exit, {}, seconds, None)


def _stop(sc: Sidecar) -> dict[str, int]:
    """A clean stop (SIGTERM); the exited daemon's ``/proc/<pid>/io``."""
    assert sc.proc is not None
    pid = sc.pid
    os.kill(pid, signal.SIGTERM)
    io = exit_io(sc.proc, pid)
    if sc.proc.returncode:
        raise RuntimeError(f"the daemon did not stop cleanly ({sc.proc.returncode})")
    return io


def _check_typical(db: Path, template: Path, n: int) -> None:
    def count(path: Path) -> int:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            con.close()

    stored = count(db) - count(template)
    if stored != n:
        raise RuntimeError(f"typical script stored {stored} events, expected {n}")


def _measured(messages: list[Message], at_exit: dict[str, int], before: dict[str, int],
              seconds: float, syncs: dict[str, int] | None, **extra: Any) -> dict[str, Any]:
    n = len(messages)
    json_bytes = mean_size(messages)

    def delta(key: str) -> int:
        return at_exit.get(key, 0) - before.get(key, 0)

    per_event = delta("write_bytes") / n
    out: dict[str, Any] = {
        "events": n, "seconds": seconds, "event_json_bytes": json_bytes,
        "write_bytes": delta("write_bytes"), "bytes_per_event": per_event,
        "x_json": per_event / json_bytes,
        "cancelled_write_bytes": delta("cancelled_write_bytes"),
        "wchar_per_event": delta("wchar") / n, "rate": n / seconds, **extra}
    if syncs is not None:
        out["syncs"] = sum(syncs.values())
        out["syncs_per_s"] = sum(syncs.values()) / seconds
        out.update({f"calls_{k}": v for k, v in syncs.items()})
    return out


# --------------------------------------------------------------------------- the scenario
def wear(env: Env, report: Report, *, seed_n: int, paces: tuple[Pace, ...], drain_n: int,
         overrides: dict[str, str] | None = None) -> None:
    """``overrides``: settings of the daemon's runs (the smoke run shortens ``flush_interval``;
    the measured runs keep the defaults)."""
    seeds = env.workdir("wear-seed")
    sidecar_db, s1 = seeded_sidecar_db(seeds / "kairo.db", seed_n)
    typical_db, s2 = seeded_typical_db(seeds / "typical.db", seed_n)
    settle(sidecar_db, typical_db)
    report.params.update(seed_events=seed_n, paces=[(p.rate, p.seconds) for p in paces],
                         drain_events=drain_n, vm=_vm_settings())
    report.notes.append(
        f"each run on a copy of a database already holding {fmt(seed_n)} events (the daemon's "
        f"migrations + the writer's INSERT, {s1:.0f} s; the typical table, {s2:.0f} s), "
        f"{sidecar_db.stat().st_size / seed_n:.0f} / {typical_db.stat().st_size / seed_n:.0f} "
        "bytes/event on disk")
    for k, pace in enumerate(paces):
        report.add(f"sidecar {pace.name}", **_sidecar_paced(env, sidecar_db, seed_n, pace, 200 + k,
                                                            overrides or {}))
        report.add(f"typical {pace.name}", **_typical_paced(env, typical_db, pace, 200 + k))
    report.add("sidecar drain", **_sidecar_drain(env, sidecar_db, seed_n, drain_n, 300,
                                                 overrides or {}))
    report.add("typical drain", **_typical_drain(env, typical_db, drain_n, 300))

    for pace in paces:
        _rows(report, pace.name, pace.name, pace.rate)
    _rows(report, "drain", f"bulk drain of {fmt(drain_n)} (process start to exit)", None)
    startup = report.median(f"sidecar {paces[0].name}", "startup_bytes")
    report.row("daemon start-up to sidecar_ready (not in the above; once per start)",
               f"{fmt(startup)} B")
    log = max(report.median(f"sidecar {p.name}", "log_bytes") / p.events for p in paces)
    report.row("the daemon's log (stdout, info; journald's writes on a Pi), per event",
               f"{log:,.1f} B")
    report.notes.append(
        "bytes written = write_bytes of /proc/<pid>/io: whole 4 KiB pages dirtied, counted once "
        "per clean-to-dirty change (a page rewritten before writeback counts once; one an fsync "
        "or writeback cleaned counts again), from sidecar_ready to the exit after a clean stop "
        "(final checkpoint included); GB/day = bytes/event x rate x 86,400. fsync/s: strace -f "
        "-c (fsync, fdatasync, sync_file_range) from the first publish to the exit, over the "
        "publishing time. Typical script: json.loads + INSERT + commit per message, id TEXT "
        "PRIMARY KEY + indexes on correlation/trace ids, WAL, synchronous NORMAL. See "
        "BENCHMARKS.md, SD-card wear")


def _rows(report: Report, key: str, name: str, rate: float | None) -> None:
    """Two rows (the daemon, the typical script) and the target for the variants ``key``."""
    texts = {}
    for variant in ("sidecar", "typical"):
        per_event = report.median(f"{variant} {key}", "bytes_per_event")
        text = f"{per_event:,.0f} B/event = {report.median(f'{variant} {key}', 'x_json'):.1f}x"
        if rate is not None:
            text += (f", {per_event * rate * DAY / 1e9:.2f} GB/day, "
                     f"{report.median(f'{variant} {key}', 'syncs_per_s'):.1f} fsync/s")
        else:
            text += f", at {fmt(report.median(f'{variant} {key}', 'rate'))} ev/s"
        texts[variant] = text
    ratio = report.ratio(f"{name}: sidecar / typical bytes per event",
                         report.median(f"sidecar {key}", "bytes_per_event"),
                         report.median(f"typical {key}", "bytes_per_event"))
    metric = f"{name}: sidecar, bytes written per stored event"
    report.row(metric, texts["sidecar"], f"{ratio:.2f}x typical")
    report.row(f"{name}: typical paho+sqlite script (baseline)", texts["typical"], "1.00x")
    report.target(metric, report.median(f"sidecar {key}", "x_json"), "<=", REQUIRED, unit="x",
                  goal=GOAL)


def _vm_settings() -> dict[str, str]:
    out = {}
    for name in ("dirty_expire_centisecs", "dirty_writeback_centisecs"):
        try:
            out[name] = Path(f"/proc/sys/vm/{name}").read_text().strip()
        except OSError:
            out[name] = "?"
    return out
