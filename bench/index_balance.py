"""What an index that grows at its right edge writes per small commit, against a rowid table.

``python -m bench.index_balance [--rows 500000] [--commits 40] [--batch 50]``

Plain ``sqlite3`` (WAL, automatic checkpoints off), no sidecar code: two tables of
``(seq INTEGER PRIMARY KEY, ts, ty)`` holding ``--rows`` rows with increasing ``ts``, one with an
index on ``(ts, ty)`` (the shape of ``events_created_at_type``), one on ``ts`` alone; then
``--commits`` commits of ``--batch`` new rows each, every new ``ts`` above all before (events
arriving in time order). The WAL is then read frame by frame and each page named by ``dbstat``:
frames per commit per table and index. SQLite appends to a rowid table's last leaf and, when it
is full, starts a new one ("balance_quick"); an index leaf that fills is rebalanced with its
siblings, which rewrites them and their parent.
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import struct
import tempfile
from pathlib import Path

TYPES = [f"kairo.sensor.t{i}" for i in range(10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="kairo-index-balance-")) / "t.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    for table, index in (("two_columns", "ts, ty"), ("one_column", "ts")):
        con.execute(f"CREATE TABLE {table} (seq INTEGER PRIMARY KEY, ts INTEGER, ty TEXT)")
        con.execute(f"CREATE INDEX {table}_index ON {table} ({index})")

    def insert(first: int, count: int) -> None:
        for table in ("two_columns", "one_column"):
            con.executemany(f"INSERT INTO {table} (ts, ty) VALUES (?, ?)",
                            ((1000 + (first + i) * 10, TYPES[i % 10]) for i in range(count)))

    con.execute("BEGIN")
    insert(0, args.rows)
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for c in range(args.commits):
        con.execute("BEGIN")
        insert(args.rows + c * args.batch, args.batch)
        con.execute("COMMIT")
    data = Path(f"{path}-wal").read_bytes()
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    frames: collections.Counter[int] = collections.Counter()
    offset = 32  # the WAL header; each frame: a 24-byte header, then the page
    while offset + 24 + page_size <= len(data):
        frames[struct.unpack(">I", data[offset:offset + 4])[0]] += 1
        offset += 24 + page_size
    owner = {pageno: name for name, pageno in con.execute("SELECT name, pageno FROM dbstat")}
    by_owner: collections.Counter[str] = collections.Counter()
    for page, count in frames.items():
        by_owner[owner.get(page, "(other)")] += count
    print(f"{args.rows:,} rows, then {args.commits} commits of {args.batch} rows in time order")
    print("| owner | WAL frames per commit |")
    print("|---|---:|")
    for name, count in by_owner.most_common():
        print(f"| {name} | {count / args.commits:.2f} |")
    con.close()


if __name__ == "__main__":
    main()
