"""What one projection costs on ingest: events/s through the writer and bytes written per
event, as a ratio against no projection, in the same run.

``python -m bench.projection_cost --base-events 100000 --events 5000 --batch 100 --rounds 3``

For each variant (and each round, variants interleaved so the shared machine's noise hits
them alike) a copy of the seeded base is settled, and a child process pushes ``--events`` new
events through the real ``Writer`` (``bench.commit_wear.push_through_writer``: ``--batch`` per
commit, all queued before it starts) with that variant's ``[[projections]]``, then a TRUNCATE
checkpoint; ``write_bytes`` of ``/proc/self/io`` is what it dirtied. The bench events are 60%
sensor readings whose value changes every time (so every fold is a new version: the dearest
case), over 8 rooms; the last variant makes a new key per event (the dearest for the card).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from sidecar.config import DatabaseConfig
from sidecar.core.projections import Projection
from sidecar.storage.db import migrate, open_database
from sidecar.storage.projections import Folder

from .commit_wear import base_database, push_through_writer, write_bytes
from .events import make_messages, mean_size, rows_for
from .procs import settle

VARIANTS: dict[str, tuple[str, list[Projection]]] = {
    "none": ("no projection", []),
    "unmatched": ("1 projection no event matches", [
        Projection("p", "kairo.plugin.state", "plugin/{payload.name}")]),
    "set": ("1 set projection, 60% of events (sensors), 8 keys", [
        Projection("p", "kairo.sensor.*", "room/{payload.room}")]),
    "merge-all": ("1 merge projection, every event, 8 keys", [
        Projection("p", "kairo.*", "room/{payload.room}", mode="merge")]),
    "new-keys": ("1 set projection, every event, a new key each", [
        Projection("p", "kairo.*", "item/{payload.n}")]),
}


def measure(path: Path, events: int, batch: int, start: int, variant: str) -> dict[str, float]:
    """In this process: ``events`` new events through the Writer with ``variant``'s rules."""
    messages = make_messages(events, seed=29, start=start)
    rows = rows_for(messages)
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    rules = VARIANTS[variant][1]
    folder = Folder(rules, max_value_bytes=65536) if rules else None
    pushed = push_through_writer(db, list(rows), batch, projections=folder)
    before = write_bytes()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    (keys,) = db.execute_sql("SELECT count(*) FROM kv_store").fetchone()
    db.close()
    written = pushed.write_bytes + write_bytes() - before
    return {"events_per_s": events / pushed.seconds, "bytes_per_event": written / events,
            "event_json": mean_size(messages), "keys": keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-events", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--dir", default="/tmp/kairo-wear")
    parser.add_argument("--child", nargs=5, metavar=("PATH", "EVENTS", "BATCH", "START", "VARIANT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, events, batch, start, variant = args.child
        print(json.dumps(measure(Path(path), int(events), int(batch), int(start), variant)))
        return
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    base = base_database(directory, args.base_events)
    work = directory / "projection-work.db"
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{work}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(base, work)
            settle(work)
            out = subprocess.run([sys.executable, "-m", "bench.projection_cost", "--child",
                                  str(work), str(args.events), str(args.batch),
                                  str(args.base_events), variant],
                                 check=True, capture_output=True, text=True).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    print(f"{args.base_events:,} events stored, {args.events:,} new, {args.batch} per commit, "
          f"median of {args.rounds} rounds")
    print("| variant | events/s | x none | bytes written/event | x none | kv keys |")
    print("|---|---:|---:|---:|---:|---:|")
    base_rate = statistics.median(r["events_per_s"] for r in results[variants[0]])
    base_bytes = statistics.median(r["bytes_per_event"] for r in results[variants[0]])
    for variant in variants:
        rate = statistics.median(r["events_per_s"] for r in results[variant])
        size = statistics.median(r["bytes_per_event"] for r in results[variant])
        print(f"| {VARIANTS[variant][0]} | {rate:,.0f} | {rate / base_rate:.2f} | {size:,.0f} | "
              f"{size / base_bytes:.2f} | {results[variant][-1]['keys']} |", flush=True)


if __name__ == "__main__":
    main()
