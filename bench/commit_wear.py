"""Bytes written per event at small commits on a big database: the SD-card wear of the schema.

``python -m bench.commit_wear --base-events 1000000 --events 3000 --batches 10,30,100``

A database holding ``--base-events`` seeded events (``events.seed_database``, built once and
kept in ``--dir`` under a name that carries the schema version) is copied for each batch size;
a child process then pushes ``--events`` new events through the real ``Writer`` (the daemon's
pragmas, ``synchronous = NORMAL``, batches of exactly ``batch`` events), ends with a TRUNCATE
checkpoint (so every page written to the WAL is also paid for in the database file), and
reports ``write_bytes`` from ``/proc/self/io``: the page-cache bytes it dirtied, in whole 4 KiB
pages, which is what the card gets. ``bytes/event`` is that over the events stored; the ratio
is to the mean size of the event JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from sidecar.config import DatabaseConfig, WriterConfig
from sidecar.core.stats import Stats
from sidecar.ingest.writer import Delivery, Writer
from sidecar.storage.db import migrate, open_database
from sidecar.storage.durability import journal_sync_for
from sidecar.storage.projections import Folder

from .events import make_messages, mean_size, rows_for, seed_database
from .procs import proc_io, settle


def write_bytes() -> int:
    """``write_bytes`` of this process (``/proc/self/io``): whole pages it dirtied so far."""
    io = proc_io(os.getpid())
    if "write_bytes" not in io:
        raise RuntimeError("no write_bytes in /proc/self/io")
    return io["write_bytes"]


class Pushed(NamedTuple):
    seconds: float  # from the writer's start to the last ack
    write_bytes: int  # what this process dirtied meanwhile (the writer's stop included)


def push_through_writer(db: Any, rows: list[Any], batch: int, *,
                        projections: Folder | None = None,
                        keys_batch: int | None = None,
                        sync: Callable[[], None] | None = None) -> Pushed:
    """Every row through the real ``Writer``, exactly ``batch`` per commit (all queued before
    it starts): how long it took and the bytes this process dirtied meanwhile. ``projections``:
    the writer folds these (``bench.projection_cost``). ``sync``: the group commit's sync, as
    the daemon's default durability runs it (``storage.durability.JournalSync``)."""
    events = len(rows)
    done = threading.Event()
    acked = [0]

    def ack(tokens: object) -> None:
        acked[0] += len(tokens)  # type: ignore[arg-type]
        if acked[0] >= events:
            done.set()

    writer = Writer(db, WriterConfig(batch_size=batch, flush_interval=0.05, queue_size=events),
                    ack=ack, window=events, stats=Stats(), projections=projections,
                    keys_batch=keys_batch, sync=sync)
    for i, row in enumerate(rows):
        writer.submit(Delivery(row, qos=1, mid=i % 65535 + 1, generation=1))
    before = write_bytes()
    started = time.perf_counter()
    writer.start()
    if not done.wait(600):
        raise RuntimeError("the writer did not finish")
    seconds = time.perf_counter() - started
    writer.stop(10)
    return Pushed(seconds, write_bytes() - before)


def _schema_version() -> str:
    migrations = sorted(p.stem for p in (Path(__file__).parent.parent / "migrations").glob("0*.py"))
    return migrations[-1] if migrations else "none"


def base_database(directory: Path, n: int) -> Path:
    """The seeded ``n``-event database for today's schema (built once, then reused)."""
    path = directory / f"wear-base-{n}-{_schema_version()}.db"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        db = open_database(DatabaseConfig(url=f"sqlite:///{tmp}"))
        migrate(db)
        db.close()
        seed_database(tmp, n)
        tmp.rename(path)
    return path


def measure(path: Path, events: int, batch: int, start: int,
            keys_batch: int | None = None, *, rich: bool = False,
            durable: bool = False) -> dict[str, float]:
    """In this process: ``events`` new events through the Writer, ``batch`` per commit
    (``durable``: with the daemon's default group-commit sync after each commit)."""
    messages = make_messages(events, seed=23, start=start, rich=rich)
    rows = rows_for(messages)
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    journal = journal_sync_for(db, durability="group") if durable else None
    pushed = push_through_writer(db, list(rows), batch, keys_batch=keys_batch,
                                 sync=journal.sync if journal else None).write_bytes
    if journal is not None:
        journal.close()
    before = write_bytes()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    written = pushed + write_bytes() - before
    stored = events  # every event is new
    json_size = mean_size(messages)
    return {"batch": batch, "events": events, "write_bytes": written,
            "bytes_per_event": written / stored, "event_json": json_size,
            "ratio": written / stored / json_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-events", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3000, help="new events per batch size")
    parser.add_argument("--batches", default="10,30,100")
    parser.add_argument("--dir", default="/tmp/kairo-wear")
    parser.add_argument("--setup", action="append", default=[], metavar="SQL",
                        help="run on each copy before measuring (a variant: drop an index, "
                             "set an FTS5 option); not counted")
    parser.add_argument("--keys-batch", type=int, default=0,
                        help="events between two event_keys catch-ups (default: the writer's)")
    parser.add_argument("--base", help="start from this file instead of the seeded base of "
                        "today's schema (e.g. an older schema's base: the child migrates it)")
    parser.add_argument("--rich", action="store_true",
                        help="the ~327-byte envelopes of the wear scenario (events.make_messages)")
    parser.add_argument("--durable", action="store_true",
                        help="sync after each commit as the default durability (group) does")
    parser.add_argument("--child", nargs=4, metavar=("PATH", "EVENTS", "BATCH", "START"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, events, batch, start = args.child
        print(json.dumps(measure(Path(path), int(events), int(batch), int(start),
                                 args.keys_batch or None, rich=args.rich,
                                 durable=args.durable)))
        return
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else base_database(directory, args.base_events)
    print(f"schema {_schema_version()}, {args.base_events:,} events already stored, "
          f"{args.events:,} new events per row; write_bytes incl. the final checkpoint"
          + "".join(f"; setup: {sql}" for sql in args.setup)
          + (f"; keys batch {args.keys_batch}" if args.keys_batch else "")
          + ("; ~327-byte envelopes" if args.rich else "")
          + ("; group-commit sync after each commit" if args.durable else ""))
    print("| events per commit | bytes written per event | x the event JSON |")
    print("|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        work = directory / "wear-work.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(base, work)
        if args.setup:
            con = sqlite3.connect(work, isolation_level=None)
            for sql in args.setup:
                con.execute(sql)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
        # a fresh copy sits in large page-cache folios: writing 4 KiB of one counts the whole
        # folio in write_bytes (BENCHMARKS.md, "SD-card wear"); sync it and drop it first
        settle(work)
        out = subprocess.run([sys.executable, "-m", "bench.commit_wear", "--child", str(work),
                              str(args.events), str(batch), str(args.base_events),
                              "--keys-batch", str(args.keys_batch)]
                             + ["--rich"] * args.rich + ["--durable"] * args.durable,
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"| {batch} | {result['bytes_per_event']:,.0f} | {result['ratio']:.1f}x |",
              flush=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{directory / 'wear-work.db'}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
