"""Lookups by id, correlation id and trace id: B-tree indexes (schema 003) against event_keys (004).

``python -m bench.lookups OLD.db NEW.db`` (e.g. the two ``bench.commit_wear`` base files: the same
1,000,000 seeded events): 300 random events' ids and their correlation and trace ids, each
looked up on both files, interleaved, in one process (SQLite alone, no MQTT); every answer is
compared (they must be equal) and p50 / p99 printed.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

from sidecar.storage import keys

from .harness import percentile

COLUMNS = "seq, id, topic, type, source, payload, metadata, created_at, received_at"
_KEYED = (f"SELECT {COLUMNS} FROM events WHERE seq IN "
          "(SELECT rowid FROM event_keys WHERE event_keys MATCH ?) AND {column} = ? {tail}")
_INDEXED = f"SELECT {COLUMNS} FROM events WHERE {{column}} = ? {{tail}}"


def _values(con: sqlite3.Connection, column: str, seqs: list[int]) -> list[str]:
    marks = ",".join("?" * len(seqs))
    return [row[0] for row in con.execute(
        f"SELECT {column} FROM events WHERE seq IN ({marks}) AND {column} IS NOT NULL", seqs)]


def _runner(con: sqlite3.Connection, sql: str, kind: str | None) -> Callable[[str], list[Any]]:
    def run(value: str) -> list[Any]:
        args = (value,) if kind is None else (keys.match(kind, [value]), value)
        return con.execute(sql, args).fetchall()
    return run


def main() -> None:
    old = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    new = sqlite3.connect(f"file:{sys.argv[2]}?mode=ro", uri=True)
    n = old.execute("SELECT max(seq) FROM events").fetchone()[0]
    rnd = random.Random(5)
    seqs = [rnd.randrange(1, n + 1) for _ in range(300)]
    print("| lookup | B-tree index (003): p50 / p99 | event_keys (004): p50 / p99 |")
    print("|---|---:|---:|")
    for name, column, tail in (("get by id", "id", "LIMIT 1"),
                               ("correlation id", "correlation_id", "ORDER BY seq LIMIT 101"),
                               ("trace id", "trace_id", "ORDER BY seq LIMIT 101")):
        values = _values(old, column, seqs)
        indexed = _INDEXED.format(column=column, tail=tail)
        keyed = _KEYED.format(column=column, tail=tail)
        runs: dict[str, Callable[[str], list[Any]]] = {
            "old": _runner(old, indexed, None), "new": _runner(new, keyed, column)}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for i, value in enumerate(values):
            answers = {}
            for variant in (("old", "new") if i % 2 == 0 else ("new", "old")):
                started = time.perf_counter()
                answers[variant] = runs[variant](value)
                times[variant].append((time.perf_counter() - started) * 1000)
            assert answers["old"] == answers["new"], (name, value)
        o, w = times["old"], times["new"]
        print(f"| {name} ({len(values)} values) | {percentile(o, 50):.3f} / "
              f"{percentile(o, 99):.3f} ms | {percentile(w, 50):.3f} / {percentile(w, 99):.3f} ms |")


if __name__ == "__main__":
    main()
