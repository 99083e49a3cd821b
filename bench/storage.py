"""Storage scenarios: the writer against SQLite itself (4), and ``synchronous`` levels (10).

Both run in this process on fresh files, with rows decoded up front exactly as the daemon
decodes them: what is measured is the write path (queue, transaction, insert-or-ignore, acks).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.config import DatabaseConfig
from sidecar.storage.db import pragmas

from . import sync_levels
from .events import insert_sql, make_messages, rows_for
from .harness import Report, fmt, interleave
from .ingest import migrated_db


def _executemany(path: Path, rows: list, batch: int = 1000) -> float:
    """``sqlite3.executemany`` in ``batch``-row transactions, the daemon's pragmas."""
    con = sqlite3.connect(path, isolation_level=None)
    for name, value in pragmas(DatabaseConfig(url=f"sqlite:///{path}")):
        con.execute(f"PRAGMA {name} = {value}")
    elapsed = timed_batches(con, insert_sql(), rows, batch)
    con.close()
    return elapsed


def timed_batches(con: sqlite3.Connection, sql: str, rows: list, batch: int) -> float:
    """Seconds to insert ``rows`` with ``executemany`` in ``batch``-row transactions."""
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, rows[i:i + batch])
        con.execute("COMMIT")
    return time.perf_counter() - started


def storage_limit(root: Path, report: Report, n: int, rounds: int) -> None:
    rows = rows_for(make_messages(n, seed=4))
    report.params.update(events=n, rounds=rounds)
    counter = iter(range(10**6))

    def fresh() -> Path:
        path = root / f"storage-{next(counter)}.db"
        return migrated_db(path)

    def writer(r: int) -> None:
        path = fresh()
        seconds = sync_levels.run_once(path, "NORMAL", rows, 500)
        report.add("writer", rate=n / seconds)
        _remove(path)

    def raw(r: int) -> None:
        path = fresh()
        seconds = _executemany(path, rows)
        report.add("executemany", rate=n / seconds)
        _remove(path)

    interleave(rounds, {"writer": writer, "executemany": raw})
    w, s = report.median("writer", "rate"), report.median("executemany", "rate")
    ratio = report.ratio("writer / executemany", w, s)
    report.row("the daemon's Writer (batches of 500, acks after commit)", f"{fmt(w)} ev/s",
               f"{ratio:.2f}x")
    report.row("sqlite3.executemany, 1,000-row transactions (baseline)", f"{fmt(s)} ev/s", "1.00x")


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def sync(root: Path, report: Report, n: int, rounds: int) -> None:
    """The writer at OFF/NORMAL/FULL/EXTRA, batches of 500 (load) and 20 (a trickle)."""
    report.params.update(events=n, rounds=rounds)
    for size in (500, 20):
        count = n if size >= 100 else max(size * 50, n // 10)
        rows = rows_for(make_messages(count, seed=10))
        times: dict[str, list[float]] = {level: [] for level in sync_levels.LEVELS}

        def run(level: str, r: int, size: int = size, rows: list = rows,
                times: dict[str, list[float]] = times) -> None:
            path = root / f"sync-{size}-{level}-{r}.db"
            times[level].append(sync_levels.run_once(path, level, rows, size))
            _remove(path)

        def variant(level: str) -> Callable[[int], None]:
            return lambda r: run(level, r)

        interleave(rounds, {level: variant(level) for level in sync_levels.LEVELS})
        for level in sync_levels.LEVELS:
            for seconds in times[level]:
                report.add(f"{level} batch {size}", rate=count / seconds)
        base = report.median(f"NORMAL batch {size}", "rate")
        for level in sync_levels.LEVELS:
            rate = report.median(f"{level} batch {size}", "rate")
            ratio = report.ratio(f"{level} / NORMAL, batch {size}", rate, base)
            report.row(f"{level}, batches of {size} ({fmt(count)} events)", f"{fmt(rate)} ev/s",
                       f"{ratio:.2f}x NORMAL")
