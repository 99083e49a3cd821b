"""A second process reading the database while the daemon writes (run by test_multiprocess).

Usage: python -m tests.support.reader DB_PATH ROUNDS BUSY_TIMEOUT_MS

Each round runs the queries a client would (count, newest rows, a correlation lookup) on a
read-only connection, retrying SQLITE_BUSY through ``sidecar.busy``. Prints one JSON line:
the counts seen, which must never go down, and how many rounds ran.
"""

from __future__ import annotations

import json
import sys
from itertools import pairwise
from pathlib import Path

from sidecar.config import DatabaseConfig
from sidecar.storage.reads import open_reader
from sidecar.storage.sqlite_errors import retry_busy


def main() -> int:
    path, rounds, busy_ms = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    db = open_reader(DatabaseConfig(url=f"sqlite:///{path}", busy_timeout_ms=busy_ms))
    counts: list[int] = []
    for _ in range(rounds):
        def read() -> int:
            count = db.execute_sql("SELECT count(*) FROM events").fetchone()[0]
            db.execute_sql("SELECT seq, id, payload FROM events ORDER BY seq DESC LIMIT 50").fetchall()
            db.execute_sql("SELECT count(*) FROM events WHERE correlation_id = ?",
                           ("corr-3",)).fetchone()
            return int(count)

        counts.append(retry_busy(read, what="read", path=str(path)))
    db.close()
    print(json.dumps({"rounds": len(counts), "first": counts[0], "last": counts[-1],
                      "monotonic": all(a <= b for a, b in pairwise(counts))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
