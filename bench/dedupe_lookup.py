"""What the writer's redelivery check costs: ``storage.keys.stored_events`` (one FTS5 MATCH of a
batch's ids) against the insert of the same batch, on a fresh store filled through the same
calls in batches of 500 (as a drain does), plus other shapes of the same lookup at the end.

    python -m bench.dedupe_lookup [--events 20000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from bench.events import insert_sql, make_messages, rows_for
from sidecar.config import load_config
from sidecar.storage import keys
from sidecar.storage.startup import open_store

BATCH = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "kairo.db"
        config = load_config(environ={"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{path}"})
        con = open_store(config.database, schema="migrate").connection()
        sql = insert_sql()
        lookups, inserts = [], []
        for start in range(0, args.events, BATCH):
            rows = rows_for(make_messages(BATCH, seed=3, start=start))
            cur = con.cursor()
            con.execute("BEGIN IMMEDIATE")
            t0 = time.perf_counter()
            keys.stored_events(cur, [row.id for row in rows if row.id is not None])
            t1 = time.perf_counter()
            cur.executemany(sql, rows)
            t2 = time.perf_counter()
            con.execute("COMMIT")
            lookups.append(t1 - t0)
            inserts.append(t2 - t1)
        half = len(lookups) // 2
        print(f"{args.events} events in batches of {BATCH}; ms per batch, median of the second half:")
        print(f"  stored_events (FTS5 MATCH of {BATCH} ids) {1e3 * sorted(lookups[half:])[half // 2]:7.2f}")
        print(f"  INSERT of the batch                      {1e3 * sorted(inserts[half:])[half // 2]:7.2f}")
        cur = con.cursor()
        stored = [r[0] for r in cur.execute("SELECT id FROM events ORDER BY random() LIMIT 50")]
        ids = [str(uuid.uuid4()) for _ in range(BATCH - len(stored))] + stored
        seqs = f"SELECT rowid FROM {keys.TABLE} WHERE {keys.TABLE} MATCH ?"
        for name, size in (("one MATCH per id", 1), ("MATCH of 50 ids", 50),
                           ("MATCH of 100 ids", 100), (f"MATCH of {BATCH} ids", BATCH)):
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for k in range(0, len(ids), size):
                    cur.execute(seqs, (keys.match("id", ids[k:k + size]),)).fetchall()
                best = min(best, time.perf_counter() - t0)
            print(f"  {BATCH} ids as {name:22s} {1e3 * best:7.2f} (best of 5)")
        con.close()


if __name__ == "__main__":
    main()
