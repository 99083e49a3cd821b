"""Read connections: open them and run the queries ``queries`` builds.

Readers never go through the writer's queue and never run on the paho network thread. One
``peewee.SqliteDatabase`` serves every reader thread; Peewee keeps one sqlite3 connection per
thread, so each worker and each replay stream reads on its own connection (WAL lets them read
beside the writer). Connections are ``query_only``: a reader can never write.

Events come back as ``StoredEvent`` rows. The size of an answer (``api.max_response_bytes``)
is kept here, where the rows are read: ``answer_page`` reads no further than an answer holds.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec
import peewee

from models import DeadLetter, Event
from sidecar.config import DatabaseConfig
from sidecar.core import paths
from sidecar.core.events import StoredEvent, event_size
from sidecar.core.kv import KvEntry
from sidecar.core.search_query import Query
from sidecar.errors import StorageError
from sidecar.storage import dialect as dialects
from sidecar.storage import indexes, kv, latest, search
from sidecar.storage.cipher import database_key
from sidecar.storage.db import is_sqlite, pragmas, sqlite_database, sqlite_path
from sidecar.storage.queries import (
    SMALL_RANGE,
    Conditions,
    SeqWindow,
    by_id,
    by_seqs,
    counts_by_type,
    estimate,
    page,
    page_keys,
    summary,
    window,
    window_arms,
)

T = TypeVar("T")

COUNT_WINDOW_MS = 15 * 60_000  # the longest stretch of created_at one chart statement counts

# A row -> StoredEvent without a Python frame per row (replay reads ~80k events/s).
_stored: Callable[[tuple[Any, ...]], StoredEvent] = functools.partial(tuple.__new__, StoredEvent)


class AnswerPage(NamedTuple):
    """One page of an answer: the events, and the cursor of the next page (``None``: the end)."""

    events: list[StoredEvent]
    next: int | None


class _Bounded(NamedTuple):
    """What ``Reader._read_within`` read: the rows, whether the last one took the size past
    ``max_bytes``, and how many keys the page had."""

    rows: list[StoredEvent]
    over: bool
    keys: int


class SearchAnswerPage(NamedTuple):
    """One page of ``search``: (hit, event) pairs, the cursor of the next page, and the
    index's state (complete, or how far the backfill is)."""

    hits: list[tuple[search.Hit, StoredEvent]]
    next: int | str | None
    state: search.State
    window: int | None = None  # ranked among the newest this many matches only


class LatestPage(NamedTuple):
    """One page of ``latest``: the newest event per key in key order, the cursor of the next
    page (the last key; ``None``: the end) and whether a path index served it."""

    events: list[StoredEvent]
    next: latest.Key | None
    indexed: bool


class StoreFigures(NamedTuple):
    """What the database file itself says: the figures of ``stats`` that need no running
    sidecar (the ``stats`` request adds its counters since start; ``stats --db`` prints these)."""

    events_total: int
    dead_letters_total: int
    oldest_event_at: int | None  # created_at, epoch ms
    newest_event_at: int | None
    database_bytes: int
    wal_bytes: int


def open_reader(config: DatabaseConfig, *, path: Path | str | None = None) -> peewee.Database:
    """A read-only (``query_only``) database for ``config.url`` (or ``path``); connections are
    opened lazily, one per thread. The file must exist.

    The file is never opened here outside SQLite (no header check): closing any descriptor of
    the file would drop this process's POSIX locks on it, and then another process's SQLite,
    seeing no other user, would delete the WAL under the running writer. A file that is not
    a database fails on the first read instead.

    ``path`` may also be a ``postgresql://`` URL (``--db``); on PostgreSQL the connections
    are read-only (``default_transaction_read_only``)."""
    if path is not None and "://" in str(path):
        config = msgspec.structs.replace(config, url=str(path))
        path = None if not is_sqlite(config) else sqlite_path(str(config.url))
    if path is None and not is_sqlite(config):
        from sidecar.storage.postgres import open_postgres

        return open_postgres(config, read_only=True)
    db_path = Path(path) if path is not None else sqlite_path(config.url)
    if not db_path.is_file():
        raise StorageError(f"database {db_path} does not exist", path=str(db_path))
    settings = [(k, v) for k, v in pragmas(config) if k != "journal_mode"]  # never change it
    return sqlite_database(str(db_path), key=database_key(config),
                           pragmas=[*settings, ("query_only", 1)],
                           timeout=config.busy_timeout_ms / 1000)


def _nul_text(exc: ValueError) -> bool:
    """psycopg2 refuses to send a string holding NUL; PostgreSQL text never holds one, so a
    filter or id with NUL matches nothing (as on SQLite, where no stored value holds it)."""
    return "NUL" in str(exc)


class Reader:
    """Runs queries on the calling thread's read connection."""

    def __init__(self, db: peewee.Database, *, small_range: int = SMALL_RANGE) -> None:
        self.db = db
        self.dialect = dialects.of(db)
        self.small = small_range  # a time range with fewer events is read by its index

    @property
    def path(self) -> Path:
        return Path(self.db.database)

    def _all(self, query: peewee.Query) -> list[tuple[Any, ...]]:
        try:
            return list(self.db.execute(query).fetchall())
        except ValueError as exc:
            if _nul_text(exc):
                return []
            raise
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            raise StorageError(f"read failed: {exc}", path=str(self.path)) from exc

    def page(self, cond: Conditions, *, limit: int, order: str = "asc",
             after: int | None = None) -> list[StoredEvent]:
        return list(map(_stored, self._all(page(cond, limit=limit, order=order, after=after,
                                                dialect=self.dialect))))

    def small_range(self, cond: Conditions) -> bool:
        """Whether ``cond`` is a time range (nothing keyed) of fewer than ``small_range``
        events, counted in the ``(created_at, type)`` index (``queries.estimate``)."""
        if not cond.ranged:
            return False
        (count,) = self._all(estimate(cond, cap=self.small))[0]
        return int(count) < self.small

    def time_plan(self, cond: Conditions) -> Conditions:
        """``cond`` to read through the ``(created_at, type)`` index and sort the seqs when
        its time range is small (one count of the index, at most ``small_range`` entries);
        as it is otherwise (walking seq finds a large range's events soon enough)."""
        if cond.by_time or cond.window is not None \
                or (cond.time_only and not self.dialect.fts_keys):  # PostgreSQL: sorts already
            return cond
        return cond._replace(by_time=True) if self.small_range(cond) else cond

    def seq_window(self, cond: Conditions) -> Conditions:
        """``cond`` to walk only the seqs its time range's events can have (``SeqWindow``),
        when the range is small: for a stream that pages on from a cursor (a replay), where
        sorting the range again on each page would cost more than the walk. A stream that
        pages on after new commits keeps finding them (``seq > newest``)."""
        if cond.window is not None or not self.small_range(cond):
            return cond
        low, high, newest = self._all(window(cond))[0]
        return cond._replace(window=SeqWindow(low, high, int(newest)))

    def answer_page(self, cond: Conditions, *, limit: int, max_bytes: int,
                    order: str = "asc") -> AnswerPage:
        """The page a ``query`` answers: at most ``limit`` events, and no more than fit in
        ``max_bytes`` of answer (``event_size``; always one, however large), read in bounded
        memory (as ``page_within``); ``next`` is set when more events may match. A small time
        range is read through its index (``time_plan``)."""
        cond = self.time_plan(cond)
        read = self._read_within(cond, limit=limit + 1, max_bytes=max_bytes, order=order,
                                 after=None)
        rows = read.rows
        if read.over and len(rows) > 1:
            rows = rows[:-1]  # the event that took the answer past max_bytes: the next page's
        rows = rows[:limit]
        return AnswerPage(rows, rows[-1].seq if rows and len(rows) < read.keys else None)

    def page_within(self, cond: Conditions, *, limit: int, max_bytes: int, order: str = "asc",
                    after: int | None = None) -> tuple[list[StoredEvent], bool]:
        """A page as ``page`` gives it, in bounded memory whatever the events' size, stopping
        after the row that takes the answer size (``event_size``) past ``max_bytes``. Returns
        the rows and whether more rows may match (a full page of keys, or stopped for size):
        continue after the last row."""
        read = self._read_within(cond, limit=limit, max_bytes=max_bytes, order=order,
                                 after=after)
        return read.rows, len(read.rows) < read.keys or read.keys == limit

    def _read_within(self, cond: Conditions, *, limit: int, max_bytes: int, order: str,
                     after: int | None) -> _Bounded:
        """First the ``seq`` keys of the page (a sort, if the plan needs one, holds only
        integers), then the rows by key, read one at a time, stopping after the row that takes
        the answer size past ``max_bytes``."""
        rows: list[StoredEvent] = []
        size = 0
        try:
            seqs = self._keys(cond, limit=limit, order=order, after=after)
            if not seqs:
                return _Bounded(rows, False, 0)
            cursor = self.db.execute(by_seqs(seqs, order=order))
            try:
                for row in cursor:
                    event = _stored(row)
                    rows.append(event)
                    size += event_size(event)
                    if size > max_bytes:
                        return _Bounded(rows, True, len(seqs))
            finally:
                cursor.close()
        except ValueError as exc:
            if _nul_text(exc):
                return _Bounded([], False, 0)
            raise
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            raise StorageError(f"read failed: {exc}", path=str(self.path)) from exc
        return _Bounded(rows, False, len(seqs))

    def _keys(self, cond: Conditions, *, limit: int, order: str, after: int | None) -> list[int]:
        """The ``seq`` keys of a page: one statement (``page_keys``), or with a ``window`` its
        arms in turn until ``limit`` (the next arm's read starts after every seq of the one
        before: nothing is skipped if a commit comes between them)."""
        if cond.window is None:
            return [seq for (seq,) in self.db.execute(
                page_keys(cond, limit=limit, order=order, after=after,
                          dialect=self.dialect)).fetchall()]
        seqs: list[int] = []
        cursor = cond.after if after is None else after
        for arm in window_arms(cond, cond.window, limit=limit, order=order, cursor=cursor):
            seqs += [seq for (seq,) in self.db.execute(arm.limit(limit - len(seqs))).fetchall()]
            if len(seqs) >= limit:
                break
        return seqs

    def search_page(self, fts_query: str | Query, cond: Conditions, *, order: str, limit: int,
                    after: int | str | None, marks: tuple[str, str],
                    max_bytes: int, rank_window: int = 0) -> SearchAnswerPage:
        """A page of full-text matches (``storage.search.matches``) with their events, no
        more than fit in ``max_bytes`` of answer (always one); ``next`` resumes after the
        last hit given (a ``rank:seq`` text when ranked, a seq by time), None at the end."""
        found = search.matches(self.db, fts_query, cond, order=order, limit=limit, after=after,
                               marks=marks, rank_window=rank_window)
        wanted = [hit.seq for hit in found.hits]
        stored: dict[int, StoredEvent] = {}
        if wanted:
            for row in self._all(by_seqs(wanted)):
                stored[row[0]] = _stored(row)
        hits: list[tuple[search.Hit, StoredEvent]] = []
        size = 0
        cut = False
        for hit in found.hits:
            found_event = stored.get(hit.seq)
            if found_event is None:  # deleted between the two reads (a purge): not a match now
                continue
            size += event_size(found_event)
            if size > max_bytes and hits:
                cut = True
                break
            hits.append((hit, found_event))
        nxt: int | str | None = None
        if (found.more or cut) and hits:
            last = hits[-1][0]
            nxt = f"{last.rank!r}:{last.seq}" if order == "rank" else last.seq
        return SearchAnswerPage(hits, nxt, found.state, found.window)

    def search_unavailable(self) -> search.SearchUnavailable | None:
        """Why ``search_page`` would refuse here (search off, or PostgreSQL), or None."""
        try:
            return search.unavailable(self.db)
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            raise StorageError(f"read failed: {exc}", path=str(self.path)) from exc

    def path_indexes(self) -> set[str]:
        """The names of the path indexes in the file (``storage.indexes``)."""
        try:
            return indexes.existing(self.db)
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            raise StorageError(f"read failed: {exc}", path=str(self.path)) from exc

    def latest_page(self, cond: Conditions, path: paths.JsonPath, *, limit: int,
                    after: latest.Key | None, max_bytes: int) -> LatestPage:
        """The newest event per key of ``path`` among the events ``cond`` matches, ``limit``
        keys after ``after`` at most and no more than fit in ``max_bytes`` (always one), read
        in one snapshot."""
        try:
            with self.db.atomic():
                indexed = path.index_name in indexes.existing(self.db)
                found = latest.page_keys(self.db, cond, path, limit=limit, after=after,
                                         indexed=indexed)
                by_seq = {e.seq: e for e in map(_stored, self.db.execute(
                    by_seqs([seq for _, seq in found.keys])).fetchall())}
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            raise StorageError(f"read failed: {exc}", path=str(self.path)) from exc
        events: list[StoredEvent] = []
        size = 0
        more = found.more
        for _key, seq in found.keys:
            event = by_seq[seq]
            size += event_size(event)
            if events and size > max_bytes:
                more = True
                break
            events.append(event)
        last = found.keys[len(events) - 1][0] if events else None
        return LatestPage(events, last if more else None, found.indexed)

    def get(self, event_id: str) -> StoredEvent | None:
        rows = self._all(by_id(event_id))
        return _stored(rows[0]) if rows else None

    def kv_get(self, key: str) -> KvEntry | None:
        return self._guard(lambda: kv.get(self.db, key))

    def kv_page(self, *, prefix: str, after: str | None, limit: int) -> kv.KvPage:
        return self._guard(lambda: kv.page(self.db, prefix=prefix, after=after, limit=limit))

    def kv_projected(self, *, prefix: str, after: int, upto: int) -> list[tuple[int, KvEntry]]:
        """``(seq, entry)`` of the keys under ``prefix`` a projection changed with ``after <
        seq <= upto``, in seq order (``storage.kv.projected_since``)."""
        return self._guard(lambda: kv.projected_since(self.db, prefix=prefix, after=after,
                                                      upto=upto))

    def last_seq(self) -> int:
        """The newest ``seq`` stored (0: none); every event stored later has a larger one."""
        (seq,) = self._all(Event.select(peewee.fn.COALESCE(peewee.fn.MAX(Event.seq), 0)).tuples())[0]
        return int(seq)

    def _guard(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            raise StorageError(f"read failed: {exc}", path=str(self.path)) from exc

    def counts_by_bucket(self, *, since: int, until: int,
                         bucket_ms: int) -> list[tuple[int, str, int]]:
        """``(bucket, type, events)`` in ``[since, until)``, bucket ``i`` holding
        ``[since + i * bucket_ms, since + (i + 1) * bucket_ms)``, read in one snapshot. One
        statement per ``COUNT_WINDOW_MS`` at most (``queries.counts_by_type``): each sorts only
        its window's index entries, where one GROUP BY over the range sorts them all (at
        1,000,000 events in 24 h: about 0.6 s against 2 s). The cost grows with the events in
        the range: callers bound the range."""
        parts = -(-bucket_ms // COUNT_WINDOW_MS)
        windows = [(i, lo, min(hi, until))
                   for i, start in enumerate(range(since, until, bucket_ms))
                   for j in range(parts)
                   if (lo := start + bucket_ms * j // parts) < until
                   and (hi := start + bucket_ms * (j + 1) // parts) > lo]
        # built once, run per window with (since, until): most windows of a long range are
        # empty, and building the statement would cost more than running it
        sql, _ = self.db.get_sql_context().sql(counts_by_type(since=0, until=1)).query()

        def count() -> dict[tuple[int, str], int]:
            counts: dict[tuple[int, str], int] = {}
            with self.db.atomic():
                for i, lo, hi in windows:
                    for kind, n in self.db.execute_sql(sql, (lo, hi)).fetchall():
                        counts[(i, str(kind))] = counts.get((i, str(kind)), 0) + int(n)
            return counts

        return [(i, kind, n) for (i, kind), n in self._guard(count).items()]

    def summary(self) -> tuple[int, int | None, int | None]:
        count, oldest, newest = self._all(summary())[0]
        return int(count), oldest, newest

    def figures(self) -> StoreFigures:
        """Counts, oldest/newest ``created_at`` and file sizes, read on this connection."""
        count, oldest, newest = self.summary()
        (dead,) = self._all(DeadLetter.select(peewee.fn.COUNT(DeadLetter.id)).tuples())[0]
        db_bytes, wal_bytes = self.file_sizes()
        return StoreFigures(count, int(dead), oldest, newest, db_bytes, wal_bytes)

    def file_sizes(self) -> tuple[int, int]:
        """``(database bytes, WAL bytes)``; 0 for a file that is not there. On PostgreSQL the
        database's size on the server (``pg_database_size``) and no WAL of its own."""
        if not self.dialect.files:
            (total,) = self._all(peewee.Select(columns=[
                peewee.fn.pg_database_size(peewee.fn.current_database())]))[0]
            return int(total), 0

        def size(p: str) -> int:
            try:
                return os.stat(p).st_size
            except OSError:
                return 0
        return size(str(self.path)), size(str(self.path) + "-wal")

    def close(self) -> None:
        """Close the calling thread's connection (each reader thread calls it when it ends)."""
        if not self.db.is_closed():
            self.db.close()
