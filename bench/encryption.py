"""What encryption at rest (SQLCipher) costs: ingest, reads and start-up, encrypted against plain
in the same run.

``python -m bench.encryption --base-events 100000 --events 5000 --batch 100 --gets 2000 --rounds 3``

A seeded ``--base-events`` database (``commit_wear.base_database``) and its encrypted copy
(``kairo-sidecar encrypt``, built once in ``--dir``) are copied afresh for each measurement;
plain and encrypted alternate (A B, then B A, ...) so machine noise hits both. Each measurement
runs in a child process:

* **ingest**: ``--events`` new events through the real ``Writer`` (``commit_wear.
  push_through_writer``, ``--batch`` per commit, the daemon's pragmas) and a TRUNCATE
  checkpoint: events/s, CPU per event (user + system: steadier than wall time on a shared
  machine), and ``write_bytes`` per event (``/proc/self/io``).
* **get**: ``--gets`` ``Reader.get(id)`` of random stored ids through ``open_reader`` (the API
  workers' path): the median and p99 per call, and CPU per call.
* **open**: ``open_store`` as at a daemon start, with ``startup_check = "quick"`` (what a start
  after a crash runs: every page read, so decrypted) and ``"off"``; page cache warm.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sidecar.config import DatabaseConfig
from sidecar.storage import cipher
from sidecar.storage.db import open_database
from sidecar.storage.encryption import encrypt, keygen
from sidecar.storage.reads import Reader, open_reader
from sidecar.storage.startup import open_store

from .commit_wear import _schema_version, base_database, push_through_writer, write_bytes
from .events import make_messages, rows_for
from .procs import settle

MODES = ("plain", "encrypted")


def _config(path: Path, mode: str, key_file: Path, **extra: Any) -> DatabaseConfig:
    return DatabaseConfig(url=f"sqlite:///{path}",
                          key_file=str(key_file) if mode == "encrypted" else None, **extra)


def cpu_seconds() -> float:
    """User + system CPU of this process (steadier than wall time on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_ingest(path: Path, mode: str, key_file: Path, events: int, batch: int,
                 start: int) -> dict[str, float]:
    rows = rows_for(make_messages(events, seed=29, start=start))
    db = open_database(_config(path, mode, key_file))
    cpu = cpu_seconds()
    pushed = push_through_writer(db, list(rows), batch)
    before = write_bytes()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    cpu = cpu_seconds() - cpu
    db.close()
    written = pushed.write_bytes + write_bytes() - before
    return {"events_per_s": events / pushed.seconds, "ingest_cpu_us_per_event": cpu / events * 1e6,
            "bytes_per_event": written / events}


def child_get(path: Path, mode: str, key_file: Path, gets: int) -> dict[str, float]:
    reader = Reader(open_reader(_config(path, mode, key_file)))
    ids = [r[0] for r in reader.db.execute_sql(
        "SELECT id FROM events ORDER BY random() LIMIT ?", (gets,)).fetchall()]
    random.Random(5).shuffle(ids)
    times = []
    cpu = cpu_seconds()
    for event_id in ids:
        started = time.perf_counter()
        assert reader.get(event_id) is not None
        times.append(time.perf_counter() - started)
    cpu = cpu_seconds() - cpu
    reader.close()
    times.sort()
    return {"get_median_us": statistics.median(times) * 1e6,
            "get_p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
            "get_cpu_us": cpu / len(ids) * 1e6}


def child_open(path: Path, mode: str, key_file: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for check in ("quick", "off"):
        started = time.perf_counter()
        db = open_store(_config(path, mode, key_file, startup_check=check), schema="migrate")
        out[f"open_{check}_ms"] = (time.perf_counter() - started) * 1000
        db.close()
    return out


def _child(args: list[str]) -> dict[str, float]:
    kind, path, mode, key_file, *rest = args
    if kind == "ingest":
        return child_ingest(Path(path), mode, Path(key_file), int(rest[0]), int(rest[1]),
                            int(rest[2]))
    if kind == "get":
        return child_get(Path(path), mode, Path(key_file), int(rest[0]))
    return child_open(Path(path), mode, Path(key_file))


def _run(*argv: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.encryption", "--child", *argv],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-events", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=5000, help="new events per ingest run")
    parser.add_argument("--batch", type=int, default=100, help="events per commit")
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/kairo-enc-bench")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    if not cipher.available():
        sys.exit("SQLCipher is not installed: pip install 'kairo-sidecar[encryption]'")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "bench.key"
    if not key_file.exists():
        keygen(key_file)
    bases = {"plain": base_database(directory, args.base_events)}
    bases["encrypted"] = directory / f"enc-base-{args.base_events}-{_schema_version()}.db"
    if not bases["encrypted"].exists():
        encrypt(bases["plain"], bases["encrypted"], cipher.read_key_file(key_file))
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    work = directory / "enc-work.db"
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            row: dict[str, float] = {}
            for kind, extra in (("ingest", [str(args.events), str(args.batch),
                                            str(args.base_events)]),
                                ("get", [str(args.gets)]), ("open", [])):
                for suffix in ("", "-wal", "-shm", ".clean-stop"):
                    Path(f"{work}{suffix}").unlink(missing_ok=True)
                shutil.copyfile(bases[mode], work)
                settle(work)
                row.update(_run(kind, str(work), mode, str(key_file), *extra))
            results[mode].append(row)
            print(f"round {r + 1} {mode}: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items()),
                  flush=True)
    for suffix in ("", "-wal", "-shm", ".clean-stop"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in MODES}
    print(f"\n{args.base_events:,} events stored; ingest {args.events:,} new events, "
          f"{args.batch} per commit; {args.gets:,} gets; medians of {args.rounds} rounds")
    print("| measure | plain | encrypted | encrypted / plain |")
    print("|---|---:|---:|---:|")
    for k in med["plain"]:
        p, e = med["plain"][k], med["encrypted"][k]
        print(f"| {k} | {p:,.2f} | {e:,.2f} | {e / p:.2f}x |")


if __name__ == "__main__":
    main()
