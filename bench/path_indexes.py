"""What ``[indexes] paths`` costs on ingest (bytes written per event) and what it buys
(``where`` and ``latest`` read time), on a database already holding ``--base-events``.

``python -m bench.path_indexes --base-events 1000000 --events 3000 --batch 100``

Wear: as ``bench.commit_wear`` (a copy of the seeded base per variant, settled; a child process
pushes ``--events`` events through the real ``Writer``, ``--batch`` per commit, then a TRUNCATE
checkpoint; ``write_bytes`` of ``/proc/self/io``), once per variant: no path index; one or three
indexed paths that the new events do not have; and that every new event has. ``payload.fingerprint``
is a random value per event (an alert's fingerprint: a random key, the expensive kind; the base
also holds 100,000 older events that have one, so the index is not tiny),
``payload.room`` has a few values, ``payload.n`` grows with time.

Reads: ``where`` and ``latest`` through ``storage.reads.Reader`` (in process, no MQTT) on the
base with and without the index on the path, p50/p99 of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig
from sidecar.storage import indexes
from sidecar.storage.db import migrate, open_database
from sidecar.storage.queries import conditions, json_path
from sidecar.storage.reads import Reader, open_reader

from .commit_wear import base_database, push_through_writer, write_bytes
from .events import insert_sql, make_messages, mean_size, rows_for
from .harness import time_calls
from .procs import settle

NONE_HAVE = ["payload.fingerprint", "payload.conversation_id", "payload.name"]
ALL_HAVE = ["payload.fingerprint", "payload.room", "payload.n"]
VARIANTS: list[tuple[str, list[str], bool]] = [
    ("no path index", [], False),
    ("1 path, no new event has it", NONE_HAVE[:1], False),
    ("3 paths, no new event has them", NONE_HAVE, False),
    ("no path index, new events with a fingerprint", [], True),
    ("1 path (random value), every new event has it", ALL_HAVE[:1], True),
    ("3 paths, every new event has them", ALL_HAVE, True),
]


def _with_fingerprint(rows: list[Any]) -> list[Any]:
    """The rows with a random ``payload.fingerprint`` added to each payload."""
    out = []
    for row in rows:
        payload = json.loads(row.payload)
        payload["fingerprint"] = uuid.uuid4().hex
        out.append(row._replace(payload=json.dumps(payload, separators=(",", ":"))))
    return out


def _child(path: Path, events: int, batch: int, start: int, fingerprint: bool) -> dict[str, Any]:
    messages = make_messages(events, seed=23, start=start)
    rows = list(rows_for(messages))
    if fingerprint:
        rows = _with_fingerprint(rows)
    json_size = mean_size(messages) + (len(',"fingerprint":""') + 32 if fingerprint else 0)
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    pushed = push_through_writer(db, rows, batch)
    before = write_bytes()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    written = pushed.write_bytes + write_bytes() - before
    return {"bytes_per_event": written / events, "ratio": written / events / json_size,
            "events_per_s": events / pushed.seconds}


def paths_base(directory: Path, base_events: int) -> Path:
    """The seeded base plus 100,000 events with a random ``payload.fingerprint`` (so an index
    on it is not tiny) inserted through its index, the FTS5 keys merged into one segment: the
    same start for every variant (built once, kept; a variant without the path drops it)."""
    base = base_database(directory, base_events)
    path = base.with_name(base.stem + "-paths.db")
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(base, tmp)
        # the fingerprint index first, so it grows by random inserts as in service (an index
        # built at once packs its pages full, and the next inserts split nearly every page)
        db = open_database(DatabaseConfig(url=f"sqlite:///{tmp}"))
        indexes.sync(db, ["payload.fingerprint"])
        db.close()
        con = sqlite3.connect(tmp, isolation_level=None)
        con.execute("BEGIN")
        rows = make_messages(100_000, seed=5, start=base_events + 10_000_000)
        con.executemany(insert_sql(), _with_fingerprint(list(rows_for(rows))))
        con.execute("COMMIT")
        con.execute("INSERT INTO event_keys(event_keys) VALUES ('optimize')")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        tmp.rename(path)
    return path


def _prepare(base: Path, work: Path, keys: list[str]) -> None:
    """The copy for a variant with its path indexes, checkpointed and settled (not counted)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, work)
    db = open_database(DatabaseConfig(url=f"sqlite:///{work}"))
    indexes.sync(db, keys)
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    settle(work)


def wear(directory: Path, base: Path, base_events: int, events: int, batch: int) -> None:
    print(f"\n{base_events:,} events already stored, {events:,} new events, {batch} per "
          "commit; write_bytes incl. the final checkpoint")
    print("| path indexes | bytes written per event | x the event JSON | writer events/s |")
    print("|---|---:|---:|---:|")
    work = directory / "paths-work.db"
    for name, keys, fingerprint in VARIANTS:
        _prepare(base, work, keys)
        out = subprocess.run([sys.executable, "-m", "bench.path_indexes", "--child", str(work),
                              str(events), str(batch), str(base_events), str(int(fingerprint))],
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | {result['bytes_per_event']:,.0f} | {result['ratio']:.1f}x "
              f"| {result['events_per_s']:,.0f} |", flush=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)


def _timed(fn: Any, repeat: int) -> tuple[float, float]:
    fn()
    times = sorted(time_calls(fn, repeat))
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def reads(directory: Path, base: Path, base_events: int, repeat: int) -> None:
    work = directory / "paths-reads.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, work)
    print(f"\nreads at {base_events:,} events (Reader in process, no MQTT), ms p50 / p99 of "
          f"{repeat}")
    print("| read | no index | path indexed |")
    print("|---|---:|---:|")
    probes: list[tuple[str, Any]] = [
        ("query where payload.n = one value", lambda r, ix: r.page(
            conditions(QueryRequest(where={"payload.n": base_events // 2}), indexed=ix), limit=100)),
        ("query type kairo.sensor.* where payload.room = 'attic', 100", lambda r, ix: r.page(
            conditions(QueryRequest(type="kairo.sensor.*", where={"payload.room": "attic"}),
                       indexed=ix), limit=100)),
        ("latest payload.room, type kairo.sensor.*", lambda r, ix: r.latest_page(
            conditions(QueryRequest(type="kairo.sensor.*")), json_path("payload.room"),
            limit=100, after=None, max_bytes=1 << 20)),
        ("latest payload.n (a key per event), 100 keys", lambda r, ix: r.latest_page(
            conditions(QueryRequest()), json_path("payload.n"), limit=100, after=None,
            max_bytes=1 << 20)),
    ]
    results: dict[str, list[str]] = {name: [] for name, _ in probes}
    for keys in ([], ["payload.n", "payload.room"]):
        db = open_database(DatabaseConfig(url=f"sqlite:///{work}"))
        started = time.perf_counter()
        indexes.sync(db, keys)
        if keys:
            print(f"(building both indexes: {time.perf_counter() - started:.1f} s)")
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        reader = Reader(open_reader(DatabaseConfig(), path=work))
        ix = reader.path_indexes()
        for name, probe in probes:
            n = repeat if keys or "latest" not in name else max(3, repeat // 10)
            p50, p99 = _timed(lambda probe=probe, reader=reader, ix=ix: probe(reader, ix), n)
            results[name].append(f"{p50:,.1f} / {p99:,.1f}")
        reader.close()
    for name, cells in results.items():
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-events", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--only", choices=("wear", "reads"))
    parser.add_argument("--dir", default="/tmp/kairo-wear")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, events, batch, start, fingerprint = args.child
        print(json.dumps(_child(Path(path), int(events), int(batch), int(start),
                                fingerprint == "1")))
        return
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    base = paths_base(directory, args.base_events)
    if args.only != "reads":
        wear(directory, base, args.base_events, args.events, args.batch)
    if args.only != "wear":
        reads(directory, base, args.base_events, args.repeat)


if __name__ == "__main__":
    main()
