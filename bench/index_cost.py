"""What each index of ``events`` costs on insert, against the table with no secondary index.

Usage: python -m bench.index_cost [--events 200000] [--rounds 3]

Inserts the same 250-byte Kairo events through the writer's SQL (executemany, 500-row
transactions, WAL, synchronous=NORMAL) into fresh files, once per index set, interleaved
(A B C ... A B C ...) so machine noise hits every variant alike; reports the median time and the
ratio to the baseline (only the primary key and the unique id index, which dedupe needs).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import uuid
from pathlib import Path

from bench.storage import timed_batches

BASE = """CREATE TABLE events (seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
 topic TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL, payload TEXT NOT NULL,
 metadata TEXT NOT NULL, created_at INTEGER NOT NULL, received_at INTEGER NOT NULL,
 correlation_id TEXT, causation_id TEXT, trace_id TEXT);
CREATE UNIQUE INDEX events_id ON events (id);"""

INDEXES = {
    "type_created_at": "CREATE INDEX events_type_created_at ON events (type, created_at)",
    "created_at": "CREATE INDEX events_created_at ON events (created_at)",
    "correlation_id": "CREATE INDEX events_correlation_id ON events (correlation_id) "
                      "WHERE correlation_id IS NOT NULL",
    "trace_id": "CREATE INDEX events_trace_id ON events (trace_id) WHERE trace_id IS NOT NULL",
}
VARIANTS = {"baseline (pk + id)": [], **{f"+ {name}": [name] for name in INDEXES},
            "all (shipped)": list(INDEXES)}
INSERT = ("INSERT OR IGNORE INTO events (id, topic, type, source, payload, metadata, created_at, "
          "received_at, correlation_id, causation_id, trace_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)")


def make_rows(n: int, seed: int = 7) -> list[tuple]:
    rnd = random.Random(seed)
    now = 1_790_000_000_000
    rows = []
    for i in range(n):
        kind = rnd.choice(["user.message", "sensor.temp", "door.open", "audit.login", "alert"])
        correlation = f"wf-{rnd.randrange(n // 20 + 1)}" if rnd.random() < 0.5 else None
        trace = uuid.UUID(int=rnd.getrandbits(128)).hex if rnd.random() < 0.3 else None
        payload = json.dumps({"i": i, "value": rnd.random(), "text": "x" * rnd.randrange(60, 120)})
        meta = json.dumps({"timestamp": now + i, "correlationId": correlation, "traceId": trace})
        rows.append((str(uuid.UUID(int=rnd.getrandbits(128))), f"kairo/{kind.replace('.', '/')}",
                     f"kairo.{kind}", "bench", payload, meta, now + i, now + i, correlation, None,
                     trace))
    return rows


def run_once(path: Path, indexes: list[str], rows: list[tuple], batch: int = 500) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA synchronous=NORMAL")
    con.executescript(BASE)
    for name in indexes:
        con.execute(INDEXES[name])
    elapsed = timed_batches(con, INSERT, rows, batch)
    con.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = make_rows(args.events)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, indexes in VARIANTS.items():
                path = Path(tmp) / f"{r}-{len(times[name])}-{abs(hash(name))}.db"
                times[name].append(run_once(path, indexes, rows))
                path.unlink()
    base = statistics.median(times["baseline (pk + id)"])
    print(f"{args.events} events, {args.rounds} rounds, median seconds and ratio to baseline")
    print("| indexes | median s | events/s | ratio |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {args.events / med:,.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
