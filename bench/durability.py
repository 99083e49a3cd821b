"""Durability modes side by side: fsyncs/s, bytes written per event, ack latency (issue 11).

For each ``[database] durability`` (none, full, group) and each load (a paced 10 and 100
events/s, and a bulk drain), a child process runs the real ``Writer`` at the daemon's defaults
(batch 500, flush 1 s, a 5,000-message in-flight window emulated like the broker's: no more
than 5,000 unacked) on a copy of a seeded database, with the real ``JournalSync``:

* fsyncs: ``fsync`` + ``fdatasync`` calls of the child, counted by ``strace -f -c``
  (``--seccomp-bpf``: only those calls are stopped);
* bytes written: ``write_bytes`` of ``/proc/self/io`` (whole pages dirtied: what the card gets),
  from before the first event to after the final TRUNCATE checkpoint and close (as at a stop);
* ack latency: from ``submit`` (the network thread handing the message over) to the ack
  callback (the PUBACK queued), per event, p50 / p99.

    flock /tmp/kairo-heavy.lock python -m bench.durability --seed-events 100000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench.commit_wear import write_bytes
from bench.events import make_messages, mean_size, seed_database
from bench.procs import settle
from sidecar.config import DatabaseConfig, LogConfig, WriterConfig
from sidecar.core.stats import Stats
from sidecar.ingest.decode import decode_message
from sidecar.ingest.writer import Delivery, Writer
from sidecar.logs import configure_logging
from sidecar.storage.db import migrate, open_database
from sidecar.storage.durability import journal_sync_for
from sidecar.storage.maintenance import truncate_wal

MODES = ("none", "full", "group")
WINDOW = 5000


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def child(path: Path, mode: str, rate: float, events: int, sync_interval: float) -> dict[str, object]:
    """One run in this process: ``events`` at ``rate``/s (0: as fast as the window allows)."""
    configure_logging(LogConfig(level="warning", format="json"))
    messages = make_messages(events, seed=29, start=10_000_000)
    config = DatabaseConfig(url=f"sqlite:///{path}", durability=mode,  # type: ignore[arg-type]
                            sync_interval=sync_interval)
    db = open_database(config)
    migrate(db)
    sync = journal_sync_for(db, durability=config.effective_durability)
    submitted: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    acked = [0]
    all_acked = threading.Event()

    def ack(tokens: Sequence[tuple[int, int]]) -> None:
        now = time.monotonic()
        for token in tokens:
            latencies.append(now - submitted[token])
        acked[0] += len(tokens)
        if acked[0] >= events:
            all_acked.set()

    stats = Stats()
    writer = Writer(db, WriterConfig(), ack=ack, window=WINDOW, stats=stats,
                    sync=sync.sync if sync else None, sync_interval=sync_interval)
    before = write_bytes()
    started, started_wall = time.monotonic(), time.time()
    writer.start()
    for i, m in enumerate(messages):
        if rate:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while i - acked[0] >= WINDOW:  # the broker's in-flight window
            time.sleep(0.0005)
        row = decode_message(m.topic, m.payload, received_at=int(time.time() * 1000),
                             max_payload_bytes=262144)
        token = (i // 65535, i % 65535 + 1)
        submitted[token] = time.monotonic()
        writer.submit(Delivery(row, qos=1, mid=token[1], generation=token[0]))
    if not all_acked.wait(300):
        raise RuntimeError(f"{mode}: not every event was acked")
    elapsed = time.monotonic() - started
    writer.stop(10)
    truncate_wal(db, when="stop")
    db.close()
    written = write_bytes() - before
    committed = (stats.last_commit_at or started_wall) - started_wall
    return {"mode": mode, "rate": rate, "events": events, "seconds": elapsed,
            "commit_seconds": committed,
            "write_bytes": written, "json_bytes": mean_size(messages),
            "ack_p50_ms": _pct(latencies, 0.5) * 1000, "ack_p99_ms": _pct(latencies, 0.99) * 1000,
            "journal_syncs": sync.syncs if sync else 0}


def _fsyncs(summary: Path) -> int:
    """fsync + fdatasync calls in an ``strace -c`` summary."""
    calls = 0
    for line in summary.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync") and len(parts) >= 5:
            calls += int(parts[3])
    return calls


def run(template: Path, work: Path, mode: str, rate: float, events: int,
        sync_interval: float) -> dict[str, object]:
    db = work / f"{mode}-{int(rate)}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, db)
    settle(db)  # a fresh copy in large folios would count whole folios in write_bytes
    summary = work / "strace-summary.txt"
    strace = shutil.which("strace")
    prefix = ([strace, "-f", "-c", "--seccomp-bpf", "-e", "trace=fsync,fdatasync", "-o",
               str(summary)] if strace else [])
    out = subprocess.run([*prefix, sys.executable, "-m", "bench.durability", "--child", str(db),
                          "--mode", mode, "--rate", str(rate), "--events", str(events),
                          "--sync-interval", str(sync_interval)],
                         check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    result["fsyncs"] = _fsyncs(summary) if strace else -1
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="group")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--seed-events", type=int, default=100_000,
                        help="events already in the database (default 100,000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the paced runs")
    parser.add_argument("--bulk", type=int, default=30_000, help="events in the bulk drain")
    parser.add_argument("--sync-interval", type=float, default=1.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.mode, args.rate, args.events, args.sync_interval)))
        return
    work = Path(tempfile.mkdtemp(prefix="kairo-durability-", dir=args.dir))
    try:
        template = work / "template.db"
        db = open_database(DatabaseConfig(url=f"sqlite:///{template}"))
        migrate(db)
        db.close()
        seed_database(template, args.seed_events)
        loads = [(10.0, int(10 * args.seconds)), (100.0, int(100 * args.seconds)),
                 (0.0, args.bulk)]
        print("| load | durability | events | fsyncs (of them group syncs) | fsyncs/s | bytes/event "
              "| x JSON | ack p50 / p99 |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for rate, events in [(r, n) for r, n in loads if n > 0]:  # --seconds 0 / --bulk 0: skip
            for mode in args.modes.split(","):
                r = run(template, work, mode, rate, events, args.sync_interval)
                per_event = int(r["write_bytes"]) / events  # type: ignore[call-overload]
                secs = float(r["seconds"])  # type: ignore[arg-type]
                commit = float(r["commit_seconds"])  # type: ignore[arg-type]
                load = f"{rate:g} ev/s" if rate else f"bulk ({events / commit:,.0f} ev/s committed)"
                print(f"| {load} | {mode} | {events:,} | {r['fsyncs']} ({r['journal_syncs']}) | "
                      f"{int(r['fsyncs']) / secs:.1f} | "  # type: ignore[call-overload]
                      f"{per_event:,.0f} | {per_event / float(r['json_bytes']):.1f}x | "  # type: ignore[arg-type]
                      f"{float(r['ack_p50_ms']):,.0f} / {float(r['ack_p99_ms']):,.0f} ms |",  # type: ignore[arg-type]
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
