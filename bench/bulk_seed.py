"""Seed the same ``n`` events into an SQLite store and a PostgreSQL database in one pass, fast
enough for 10,000,000 (issue 13's read bench, ``python -m bench.postgres queries``).

Rows are what the daemon stores: ``bench.events.make_messages`` decoded by the daemon's
``decode_message`` (``bench.events.rows_for``), in worker processes (generation and decoding
are most of the CPU, ``seed_database`` does them in line), ``chunk`` events at a time, a bounded
number of chunks ahead. The main process writes each chunk into both stores while the workers
make the next ones:

* SQLite: the writer's INSERT and the keys in the daemon's steps (``keys.catch_up`` every
  ``KEYS_BATCH`` events, so ``event_keys`` holds the segments the daemon would have made), one
  transaction per chunk, with the journal off and ``synchronous=OFF`` for the seed only; the
  file is put back in WAL mode at the end. Same schema (the migrations'), every key indexed.
* PostgreSQL: ``COPY events (...) FROM STDIN`` per chunk (text format, made by the workers) in
  a thread, so the server parses one chunk while SQLite takes the next. With
  ``indexes="after"`` the migrations' secondary indexes on ``events`` are dropped first and
  made again with ``CREATE INDEX`` (one sort each instead of 10M random B-tree inserts), the
  ``event_types`` trigger is off during COPY and its table filled with the distinct types after
  (what the trigger would have left); ``indexes="during"`` keeps the schema as migrated. Ends
  with ``VACUUM ANALYZE events`` (what autovacuum does after a bulk insert).

``seq`` is 1..n on both (the sequence / AUTOINCREMENT draws it in insert order), so a ``seq``
names the same event on both engines.
"""

from __future__ import annotations

import io
import multiprocessing
import sqlite3
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.core.events import EVENT_COLUMNS
from sidecar.storage import keys

from .events import chunks, insert_sql, make_messages, rows_for

_COPY = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
_SPECIAL = ("\\", "\t", "\n", "\r")


def _copy_field(value: Any) -> str:
    """One field in COPY's text format."""
    if value is None:
        return "\\N"
    if not isinstance(value, str):
        return str(value)
    if any(c in value for c in _SPECIAL):
        return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return value


def make_chunk(seed: int, start: int, size: int) -> tuple[list[tuple[Any, ...]], bytes]:
    """Events ``start`` .. ``start + size`` as the daemon stores them: the rows, and the same
    rows as COPY text (run in a worker process)."""
    rows = [tuple(r) for r in rows_for(make_messages(size, seed=seed, start=start))]
    text = "".join("\t".join(map(_copy_field, r)) + "\n" for r in rows)
    return rows, text.encode("utf-8")


@dataclass
class SeedTimes:
    """Seconds spent, by phase (the phases overlap: see the module)."""

    total: float = 0.0
    waiting_for_rows: float = 0.0  # main process idle, the workers behind
    sqlite: float = 0.0  # INSERT + keys + COMMIT, main thread
    copy_wait: float = 0.0  # main thread waiting for the previous COPY
    pg_indexes: dict[str, float] = field(default_factory=dict)
    pg_finish: float = 0.0  # event_types, VACUUM ANALYZE
    sqlite_finish: float = 0.0  # WAL mode back, checkpoint


def _pg_connect(url: str) -> Any:
    import psycopg2

    con = psycopg2.connect(url)
    with con.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
    con.commit()
    return con


def _pg_prepare(con: Any, indexes: str) -> list[tuple[str, str]]:
    """Drop the secondary indexes and the type trigger (``indexes="after"``); their
    definitions, to make them again."""
    with con.cursor() as cur:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events' "
                    "AND indexname <> 'events_pkey' ORDER BY indexname")
        defs = [(str(a), str(b)) for a, b in cur.fetchall()]
        if indexes == "after":
            for name, _ in defs:
                cur.execute(f'DROP INDEX "{name}"')
            cur.execute("ALTER TABLE events DISABLE TRIGGER events_type_insert")
    con.commit()
    return defs


def _pg_finish(con: Any, defs: list[tuple[str, str]], indexes: str, times: SeedTimes) -> None:
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '512MB'")
        if indexes == "after":
            for name, sql in defs:
                t = time.perf_counter()
                cur.execute(sql)
                times.pg_indexes[name] = time.perf_counter() - t
        t = time.perf_counter()
        if indexes == "after":
            cur.execute("INSERT INTO event_types (type) SELECT DISTINCT type FROM events "
                        "ON CONFLICT DO NOTHING")
            cur.execute("ALTER TABLE events ENABLE TRIGGER events_type_insert")
        cur.execute("VACUUM ANALYZE events")
        times.pg_finish = time.perf_counter() - t


def _copy(con: Any, data: bytes) -> None:
    with con.cursor() as cur:
        cur.copy_expert(_COPY, io.BytesIO(data), size=1 << 20)
    con.commit()


def seed_both(sqlite_path: Path, pg_url: str | None, n: int, *, seed: int = 11,
              chunk: int = 50_000, workers: int = 2, indexes: str = "after",
              progress: bool = True) -> SeedTimes:
    """``n`` events into the migrated SQLite store at ``sqlite_path`` and (unless ``None``) the
    migrated PostgreSQL database at ``pg_url``; see the module."""
    times = SeedTimes()
    started = time.perf_counter()
    con = sqlite3.connect(sqlite_path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-524288")
    con.execute("PRAGMA temp_store=MEMORY")
    sql = insert_sql()
    pg = _pg_connect(pg_url) if pg_url is not None else None
    defs = _pg_prepare(pg, indexes) if pg is not None else []
    pool = multiprocessing.get_context("fork").Pool(workers)
    copier = ThreadPoolExecutor(max_workers=1)
    pending: deque[Any] = deque()
    copying: Future[None] | None = None
    todo = iter(list(chunks(n, chunk)))
    try:
        for _ in range(workers + 2):
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(make_chunk, (seed, *nxt)))
        done = 0
        while pending:
            t = time.perf_counter()
            rows, text = pending.popleft().get()
            times.waiting_for_rows += time.perf_counter() - t
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.apply_async(make_chunk, (seed, *nxt)))
            if pg is not None:
                t = time.perf_counter()
                if copying is not None:
                    copying.result()
                times.copy_wait += time.perf_counter() - t
                copying = copier.submit(_copy, pg, text)
            t = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, rows)
            cursor = con.cursor()
            while keys.catch_up(cursor, limit=keys.KEYS_BATCH):
                pass
            con.execute("COMMIT")
            times.sqlite += time.perf_counter() - t
            done += len(rows)
            if progress and done % (chunk * 20) == 0:
                print(f"    {done:,} events, {time.perf_counter() - started:.0f} s", flush=True)
        if copying is not None:
            copying.result()
    finally:
        pool.terminate()
        copier.shutdown(wait=True)
    t = time.perf_counter()
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    times.sqlite_finish = time.perf_counter() - t
    if pg is not None:
        try:
            _pg_finish(pg, defs, indexes, times)
        finally:
            pg.close()
    times.total = time.perf_counter() - started
    return times
