"""Integrity checks (at start-up and ``check``) and salvaging a damaged file (``recover``).

Checks open the file read-only (``mode=ro``): a read-only connection never checkpoints nor
rewrites anything, so a damaged database is left byte for byte as it was. Nothing here renames,
truncates or replaces a database file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sidecar.config import DatabaseConfig
from sidecar.errors import CorruptDatabaseError, StorageError
from sidecar.logs import get_logger
from sidecar.storage import cipher, cleanstop
from sidecar.storage.cipher import ANY_DATABASE_ERRORS, DATABASE_ERRORS, DatabaseKey
from sidecar.storage.db import check_is_sqlite, migrate, open_database
from sidecar.storage.maintenance import StorageInfo, storage_info, truncate_wal
from sidecar.storage.sqlite_errors import is_busy, retry_busy

log = get_logger("sidecar.integrity")

TABLES = ("events", "dead_letters", "kv_store", "delivery_ids")
MAX_PROBLEMS = 100


def open_readonly(path: Path, *, timeout: float = 5.0, key: DatabaseKey | None = None) -> Any:
    """A read-only connection: sees the WAL, writes nothing (not even a checkpoint at close).
    Keyed with ``key`` (``cipher.connect``): a wrong or missing key is ``EncryptionKeyError``."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    return cipher.connect(uri, key=key, uri=True, timeout=timeout, check_same_thread=False,
                          name=str(path))


def problems(path: Path, *, full: bool = False, timeout: float = 5.0,
             key: DatabaseKey | None = None) -> list[str]:
    """``[]`` if the file passes ``quick_check`` (``integrity_check`` if ``full``), else what is
    wrong. A file SQLite cannot read at all is one problem; a locked one is retried."""
    pragma = "integrity_check" if full else "quick_check"

    def run() -> list[str]:
        con = open_readonly(path, timeout=timeout, key=key)
        try:
            rows = con.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})").fetchall()
        finally:
            con.close()
        return [] if rows == [("ok",)] else [str(r[0]) for r in rows]

    try:
        return retry_busy(run, what=pragma, path=str(path))
    except DATABASE_ERRORS as exc:
        if is_busy(exc):
            raise
        return [f"{exc}"]


def verify_on_start(path: Path, mode: str, key: DatabaseKey | None = None) -> float:
    """Refuse (``CorruptDatabaseError``, exit 6) a database that fails its start-up check.

    ``auto`` checks like ``quick`` unless the last stop was clean and nothing touched the file
    since (``storage.cleanstop``). Either way the clean-stop record is removed before the file
    is opened for writing. Returns when the whole file was last checked (unix seconds; 0.0 if
    it never was), for the record the next clean stop writes."""
    now = time.time()
    if not path.exists() or path.stat().st_size == 0:
        cleanstop.clear(path)
        return now  # a new database: nothing to check yet
    record = cleanstop.read(path)
    if mode == "off":
        cleanstop.clear(path)
        return record.checked_at if record is not None else 0.0
    check_is_sqlite(path, key)
    if mode == "auto":
        reason = cleanstop.why_check(path, record, now=now)
        if reason is None:
            assert record is not None
            log.info("integrity_check_skipped", reason="clean_stop",
                     last_check_age_s=round(now - record.checked_at))
            cleanstop.clear(path)
            return record.checked_at
        log.info("integrity_check_needed", reason=reason)
    cached_before = cached_fraction(path)
    started = time.monotonic()
    found = problems(path, full=mode == "full", key=key)
    log.info("integrity_checked", check=mode, ok=not found, seconds=round(time.monotonic() - started, 3))
    if found:
        log.error("database_corrupt", path=str(path), problems=found[:10])
        raise CorruptDatabaseError(path=str(path), problems=found)
    cleanstop.clear(path)
    if cached_before < 0.5:
        _forget_cached_pages(path)
    return now


def cached_fraction(path: Path) -> float:
    """The share of ``path``'s pages in the page cache (``mincore`` on a read-only mapping);
    1.0 where that cannot be told (then nothing is dropped)."""
    import ctypes
    import mmap

    try:
        size = path.stat().st_size
        if size == 0:
            return 1.0
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        with path.open("rb") as fh:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fh.fileno(), 0)
            if address in (None, ctypes.c_void_p(-1).value):
                return 1.0
            try:
                vector = ctypes.create_string_buffer(pages)
                if libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
                    return 1.0
                return sum(b & 1 for b in vector.raw) / pages
            finally:
                libc.munmap(ctypes.c_void_p(address), size)
    except (OSError, AttributeError, ValueError):
        return 1.0


def _forget_cached_pages(path: Path) -> None:
    """Drop the file's pages (all clean: the check only read) from the page cache, when the
    check itself brought most of them in (a file already cached, as on a restart, stays so:
    the start-up check then takes 0.8 s at 1,000,000 events, not 2.7 s from disk).

    The check reads every page in order, so the kernel reads ahead and caches the file in large
    folios (16-64 KiB+ on ext4, Linux 6.x); when SQLite later writes one 4 KiB page of such a
    folio, the whole folio is accounted as written (``write_bytes``): measured as about a
    quarter of the daemon's bytes per event at 10 events/s (BENCHMARKS.md, "SD-card wear").
    Pages read afterwards come one at a time, in 4 KiB folios. Called before SQLite opens the
    file in this process, so closing these descriptors drops no lock of ours."""
    with contextlib.suppress(OSError), path.open("rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# ------------------------------------------------------------------------------------ check
@dataclass
class Report:
    path: Path
    problems: list[str]
    events: int | None = None
    dead_letters: int | None = None
    seq_range: tuple[int | None, int | None] = (None, None)
    created_range: tuple[int | None, int | None] = (None, None)
    migrations: list[str] = field(default_factory=list)
    storage: StorageInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check(path: Path, *, full: bool = True, key: DatabaseKey | None = None) -> Report:
    """A full integrity check and a summary of what the file holds (whatever can be read)."""
    check_is_sqlite(path, key)
    if not path.exists():
        raise StorageError(f"database {path} does not exist", path=str(path))
    report = Report(path, problems(path, full=full, key=key))
    con = open_readonly(path, key=key)
    try:
        def one(sql: str) -> Any:
            try:
                return con.execute(sql).fetchone()
            except DATABASE_ERRORS:
                return None

        row = one("SELECT count(*) FROM events")
        report.events = row[0] if row else None
        row = one("SELECT count(*) FROM dead_letters")
        report.dead_letters = row[0] if row else None
        row = one("SELECT min(seq), max(seq) FROM events")
        report.seq_range = (row[0], row[1]) if row else (None, None)
        row = one("SELECT min(created_at), max(created_at) FROM events")
        report.created_range = (row[0], row[1]) if row else (None, None)
        with contextlib.suppress(*DATABASE_ERRORS):
            report.migrations = [r[0] for r in con.execute("SELECT name FROM migratehistory ORDER BY id")]
        with contextlib.suppress(*DATABASE_ERRORS):
            report.storage = storage_info(_Raw(con), path)
    finally:
        con.close()
    return report


class _Raw:
    """The one ``execute_sql`` method ``storage_info`` needs, over a plain sqlite3 connection."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def execute_sql(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._con.execute(sql, params)


# ------------------------------------------------------------------------------------ recover
@dataclass
class TableRecovery:
    """What ``recover`` did with one table, and how many rows the source held as far as can be
    told from what is still readable (``expected``; an upper bound when not ``exact``)."""

    table: str
    rows: int = 0
    skipped: int = 0  # rows read but refused by the new schema (damaged values)
    unreadable: list[tuple[int, int]] = field(default_factory=list)  # rowid ranges [lo, hi]
    error: str | None = None  # the whole table could not be read
    expected: int | None = None  # None: nothing readable says how many rows there were
    exact: bool = True  # False: ``expected`` is an upper bound (a rowid range, not a count)
    expected_from: str = ""  # where ``expected`` comes from, in words

    @property
    def lost(self) -> int | None:
        """Rows the source held that are not in DEST (an upper bound when not ``exact``)."""
        return None if self.expected is None else max(self.expected - self.rows, 0)

    @property
    def complete(self) -> bool:
        """Every row the source held is in DEST (proven, not assumed)."""
        return self.lost == 0


@dataclass
class RecoverReport:
    src: Path
    dest: Path
    tables: list[TableRecovery]
    dest_ok: bool
    seconds: float

    @property
    def lost(self) -> dict[str, int | None]:
        """Rows lost per table, for the tables that lost rows or cannot say (``None``)."""
        return {t.table: t.lost for t in self.tables if not t.complete}


WINDOW = 1000

ProgressFn = Callable[[int, int], None]  # (rowids covered, rowids to cover)


@dataclass
class _Plan:
    """What can be told about a table before its rows are read."""

    lo: int | None = None  # rowid range to read
    hi: int | None = None
    btree_ok: bool = True  # min/max rowid could be read from the table's own b-tree
    index: str | None = None  # a full index that could be read to the end
    index_rows: int | None = None  # how many entries it has: one per row of the table
    bound_from: str = ""


def recover(src: Path, dest: Path, *, config: DatabaseConfig | None = None,
            progress: ProgressFn | None = None) -> RecoverReport:
    """Copy every row that can still be read from ``src`` into a new, freshly migrated ``dest``.

    Reads each table by rowid windows; a window that fails is split until the unreadable rows
    are isolated and skipped. ``src`` is opened read-only and never changed; ``dest`` must not
    exist. Event ``seq`` values are kept (replay cursors stay valid). Each table's
    ``expected`` row count comes from what is still readable besides its rows: a full index
    (one entry per row), else the rowid range (the table's b-tree ends, ``sqlite_sequence``).
    """
    started = time.monotonic()
    if not src.exists():
        raise StorageError(f"database {src} does not exist", path=str(src))
    base = config or DatabaseConfig()
    key = cipher.database_key(base)
    check_is_sqlite(src, key)
    if dest.exists() and dest.stat().st_size > 0:
        raise StorageError(f"{dest} already exists; recover writes a new file: choose another "
                           "name (the damaged file is never overwritten)", path=str(dest))
    if dest.resolve() == src.resolve():
        raise StorageError("recover needs a new file as DEST, not the damaged one", path=str(dest))
    # DEST is encrypted with the same key as SRC (plain if SRC is)
    db = open_database(DatabaseConfig(url=f"sqlite:///{dest}", synchronous="OFF",
                                      busy_timeout_ms=base.busy_timeout_ms,
                                      key=base.key, key_file=base.key_file))
    try:
        migrate(db)
        con = open_readonly(src, key=key)
        try:
            plans = {table: _plan(con, table) for table in TABLES}
            cover = _Cover(progress, sum(_span(p) for p in plans.values()))
            tables = [_recover_table(con, db, table, plans[table], cover) for table in TABLES]
            cover.finish()
            _keep_sequence(con, db)
        finally:
            con.close()
        db.execute_sql("PRAGMA synchronous = FULL")
        truncate_wal(db, when="recover")
        dest_ok = db.execute_sql("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    report = RecoverReport(src, dest, tables, dest_ok, round(time.monotonic() - started, 2))
    log.info("recover_finished", src=str(src), dest=str(dest), dest_ok=dest_ok,
             rows={t.table: t.rows for t in tables},
             expected={t.table: t.expected for t in tables},
             lost=report.lost,
             unreadable={t.table: len(t.unreadable) for t in tables if t.unreadable})
    return report


def _span(plan: _Plan) -> int:
    return 0 if plan.lo is None or plan.hi is None else plan.hi - plan.lo + 1


class _Cover:
    """Reports rowids covered so far (read or found unreadable) against all rowids to cover."""

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self._progress = progress
        self.total = total
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        if self._progress is not None:
            self._progress(self.done, self.total)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress(self.total, self.total)


def _columns(db: Any, table: str) -> list[str]:
    return [row[1] for row in db.execute_sql(f'PRAGMA table_info("{table}")').fetchall()]


def _recover_table(con: sqlite3.Connection, db: Any, table: str, plan: _Plan,
                   cover: _Cover) -> TableRecovery:
    result = TableRecovery(table)
    try:
        src_columns = {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
    except DATABASE_ERRORS as exc:
        result.error = str(exc)
        _expect(result, plan)
        return result
    columns = [c for c in _columns(db, table) if c in src_columns]
    if not columns:
        result.error = "table missing in the source"
        _expect(result, plan)
        return result
    names = ", ".join(f'"{c}"' for c in columns)
    select = f'SELECT {names} FROM "{table}" WHERE rowid >= ? AND rowid < ?'
    insert = f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ({", ".join("?" * len(columns))})'
    if plan.lo is not None and plan.hi is not None:
        for start in range(plan.lo, plan.hi + 1, WINDOW):
            end = min(start + WINDOW, plan.hi + 1)
            for rows in _read_window(con, select, start, end, result):
                _insert(db, insert, rows, result)
            cover.add(end - start)
    elif not plan.btree_ok:
        result.error = "its b-tree cannot be read and nothing readable gives its rowid range"
    _expect(result, plan)
    return result


def _plan(con: sqlite3.Connection, table: str) -> _Plan:
    """The rowid range to read and a row count from a full index, from whatever is readable:
    the table's b-tree ends, its indexes (an index holds every row's rowid), the sequence."""
    plan = _Plan()

    def value(sql: str, *args: object) -> int | None:
        try:
            row = con.execute(sql, args).fetchone()
        except DATABASE_ERRORS:
            plan.btree_ok = False
            return None
        return int(row[0]) if row and row[0] is not None else None

    lo = value(f'SELECT min(rowid) FROM "{table}"')
    hi = value(f'SELECT max(rowid) FROM "{table}"')
    plan.bound_from = "the table's rowid range"
    for name in _full_indexes(con, table):
        counted = _count_index(con, table, name)
        if counted is None:
            continue
        plan.index, (plan.index_rows, index_lo, index_hi) = name, counted
        if index_lo is not None and index_hi is not None:
            lo = index_lo if lo is None else min(lo, index_lo)
            hi = index_hi if hi is None else max(hi, index_hi)
        break
    with contextlib.suppress(*DATABASE_ERRORS):
        row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if row and row[0] is not None and not plan.btree_ok:
            hi = max(int(row[0]), hi or 0)  # rows after the last readable one may be gone too
            plan.bound_from = "the rowid range up to sqlite_sequence"
    if hi is None:
        return plan
    plan.lo, plan.hi = (1 if lo is None else lo), hi
    return plan


def _full_indexes(con: sqlite3.Connection, table: str) -> list[str]:
    """The table's indexes that hold one entry per row (not partial), unique ones first."""
    try:
        rows = con.execute(f'PRAGMA index_list("{table}")').fetchall()
    except DATABASE_ERRORS:
        return []
    # columns: seq, name, unique, origin, partial
    return [str(r[1]) for r in sorted(rows, key=lambda r: -int(r[2])) if not r[4]]


def _count_index(con: sqlite3.Connection, table: str,
                 index: str) -> tuple[int, int | None, int | None] | None:
    """(entries, smallest rowid, largest rowid) read from ``index`` alone (a covering scan
    never touches the table's own pages), or None if the index cannot be read to the end."""
    sql = f'SELECT count(*), min(rowid), max(rowid) FROM "{table}" INDEXED BY "{index}"'
    try:
        row = con.execute(sql).fetchone()
    except DATABASE_ERRORS:
        return None
    return int(row[0]), row[1], row[2]


def _expect(result: TableRecovery, plan: _Plan) -> None:
    """How many rows the source held: a full index's count, else the table itself when it was
    read without a failure, else at most the rows read plus the unreadable rowids."""
    read = result.rows + result.skipped
    if plan.index is not None and plan.index_rows is not None:
        result.expected = max(plan.index_rows, read)
        result.expected_from = f"entries in index {plan.index}"
    elif result.error is None and not result.unreadable and plan.btree_ok:
        result.expected = read
        result.expected_from = "table read in full"
    elif result.error is None and plan.lo is not None:
        result.expected = read + sum(hi - lo + 1 for lo, hi in result.unreadable)
        result.exact = False
        result.expected_from = plan.bound_from
    else:
        result.exact = False
        result.expected_from = "nothing readable tells"


def _read_window(con: sqlite3.Connection, select: str, lo: int, hi: int,
                 result: TableRecovery) -> Iterator[list[tuple[Any, ...]]]:
    """Rows with rowid in [lo, hi); on a read error split the window down to single rows."""
    try:
        rows = con.execute(select, (lo, hi)).fetchall()
    except DATABASE_ERRORS:
        if hi - lo <= 1:
            if result.unreadable and result.unreadable[-1][1] == lo - 1:
                result.unreadable[-1] = (result.unreadable[-1][0], lo)
            else:
                result.unreadable.append((lo, lo))
            return
        mid = (lo + hi) // 2
        yield from _read_window(con, select, lo, mid, result)
        yield from _read_window(con, select, mid, hi, result)
        return
    if rows:
        yield rows


def _insert(db: Any, sql: str, rows: list[tuple[Any, ...]], result: TableRecovery) -> None:
    try:
        with db.atomic():
            cursor = db.cursor()
            cursor.executemany(sql, rows)
        result.rows += max(cursor.rowcount, 0)
        return
    except ANY_DATABASE_ERRORS:
        pass
    for row in rows:  # a damaged value somewhere: keep every row the schema accepts
        try:
            db.execute_sql(sql, row)
            result.rows += 1
        except ANY_DATABASE_ERRORS:
            result.skipped += 1


def _keep_sequence(con: sqlite3.Connection, db: Any) -> None:
    """Carry the events sequence over, so a seq handed out before the damage is never reused."""
    try:
        row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    except DATABASE_ERRORS:
        return
    if row and row[0] is not None:
        db.execute_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'",
                       (int(row[0]),))
        db.execute_sql("INSERT INTO sqlite_sequence (name, seq) SELECT 'events', ? WHERE NOT "
                       "EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events')", (int(row[0]),))
