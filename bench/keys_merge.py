"""FTS5 ``automerge`` of ``event_keys``: what a lookup costs with each setting (issue 11).

``python -m bench.keys_merge BASE [--events 200000] [--dir D]``: for each setting (FTS5's default
4; 16, migration 010; 16 with ``crisismerge`` 32) a copy of ``BASE`` (a seeded store, e.g.
``bench.commit_wear``'s) gets the setting, then ``--events`` new events through the real
``Writer`` at 500 per commit (so the merges of that setting have run), then the same random
events are looked up on every copy, interleaved, on read-only connections: get by id through
``keys.stored_events`` (as the writer's dedupe and ``get`` do) and a correlation id's rowids by
MATCH. Prints p50 / p99 in ms and the rows of ``event_keys_idx`` (about one per leaf page of
every segment). Then the writer's throughput with 4 and 16 (``--throughput N``, default
100,000; 0 skips it): N events at 500 per commit into a new store, the two settings
interleaved, three rounds, medians (the writer's duplicate check looks every id of a batch up
in every segment). The bytes each setting writes: ``bench.commit_wear --setup``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import time
from pathlib import Path

from sidecar.config import DatabaseConfig
from sidecar.storage import keys
from sidecar.storage.db import migrate, open_database

from .commit_wear import push_through_writer
from .events import make_messages, rows_for
from .harness import percentile

_SET = "INSERT INTO event_keys(event_keys, rank) VALUES ('{}', {})"
SETTINGS = {"automerge 4 (FTS5 default)": [_SET.format("automerge", 4)],
            "automerge 16 (migration 010)": [_SET.format("automerge", 16)],
            "automerge 16, crisismerge 32": [_SET.format("crisismerge", 32),
                                             _SET.format("automerge", 16)]}


def _prepare(base: Path, path: Path, sqls: list[str], events: int) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, path)
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    # no migrate(): a migration could change the setting under test (the base is migrated)
    for sql in sqls:
        db.execute_sql(sql)
    n = db.execute_sql("SELECT max(seq) FROM events").fetchone()[0] or 0
    push_through_writer(db, list(rows_for(make_messages(events, seed=23, start=n))), 500)
    db.close()


def _throughput(directory: Path, events: int) -> None:
    """The writer's events/s into a new store with automerge 4 and 16, interleaved."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = list(rows_for(make_messages(events, seed=5)))
    rates: dict[int, list[float]] = {4: [], 16: []}
    for _ in range(3):
        for automerge in rates:
            path = directory / f"throughput-{automerge}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
            migrate(db)
            db.execute_sql(_SET.format("automerge", automerge))
            rates[automerge].append(events / push_through_writer(db, rows, 500).seconds)
            db.close()
    print(f"the writer, {events:,} events at 500 per commit into a new store, 3 rounds "
          "interleaved, median events/s: " + ", ".join(
              f"automerge {automerge} {sorted(values)[1]:,.0f}" for automerge, values in rates.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="a migrated, seeded store (copied, never changed)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--lookups", type=int, default=3000)
    parser.add_argument("--dir", default="/tmp/kairo-keys-merge")
    parser.add_argument("--throughput", type=int, default=100_000)
    args = parser.parse_args()
    if args.throughput:
        _throughput(Path(args.dir), args.throughput)
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, (name, sqls) in enumerate(SETTINGS.items()):
        paths[name] = directory / f"merge-{k}.db"
        _prepare(Path(args.base), paths[name], sqls, args.events)
    cons = {name: sqlite3.connect(f"file:{p}?mode=ro", uri=True) for name, p in paths.items()}
    first = next(iter(cons.values()))
    top = first.execute("SELECT max(seq) FROM events").fetchone()[0]
    rnd = random.Random(7)
    seqs = [rnd.randrange(1, top + 1) for _ in range(args.lookups)]
    ids = [first.execute("SELECT id FROM events WHERE seq = ?", (s,)).fetchone()[0] for s in seqs]
    correlations = [row[0] for s in seqs for row in first.execute(
        "SELECT correlation_id FROM events WHERE seq = ? AND correlation_id IS NOT NULL", (s,))]
    times: dict[str, dict[str, list[float]]] = {name: {"id": [], "corr": []} for name in cons}
    for kind, values in (("id", ids), ("corr", correlations)):
        for value in values:
            for name, con in cons.items():
                cur = con.cursor()
                started = time.perf_counter()
                if kind == "id":
                    if not keys.stored_events(cur, [value]):
                        raise RuntimeError(f"{name}: {value} not found")
                else:
                    cur.execute("SELECT rowid FROM event_keys WHERE event_keys MATCH ?",
                                (keys.match("correlation_id", [value]),)).fetchall()
                times[name][kind].append((time.perf_counter() - started) * 1000)
    print(f"{args.events:,} events written after the setting; {len(ids)} ids, "
          f"{len(correlations)} correlation ids looked up on each copy, interleaved")
    print("| setting | event_keys_idx rows | get by id p50 / p99 ms | correlation id p50 / p99 ms |")
    print("|---|---:|---:|---:|")
    for name, con in cons.items():
        rows = con.execute("SELECT count(*) FROM event_keys_idx").fetchone()[0]
        t = times[name]
        print(f"| {name} | {rows:,} | {percentile(t['id'], 50):.3f} / {percentile(t['id'], 99):.3f} "
              f"| {percentile(t['corr'], 50):.3f} / {percentile(t['corr'], 99):.3f} |")
    for con in cons.values():
        con.close()
    for path in paths.values():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
