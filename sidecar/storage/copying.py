"""``kairo-sidecar copy``: move a whole store to another database, either direction
(``sqlite:///...`` -> ``postgresql://...`` to move a Pi's history into the central database,
or back).

Events go in source ``seq`` order, ``batch_size`` per transaction of the target, each batch with
its place in ``copy_progress`` in the same transaction (a bookkeeping table of the copy's own,
made in the target when first needed, no migration: the daemon never reads it): a copy killed at any
point resumes after exactly what it committed, and an event whose id the target already holds
(the daemon stored it too, through a bridge) is skipped, not doubled. Dead letters follow by
their ``id`` the same way, then the key-value store (an entry is written unless the target holds
the key at the same or a newer version). Copied events get the target's own ``seq`` values: to
its replay cursors they are new.

PostgreSQL holds no U+0000 (NUL) in text or JSONB, SQLite does: an event holding one (a JSON
``\\u0000`` escape in its payload or metadata, a NUL in a text column) cannot be copied there.
It becomes a dead letter of the target (reason ``storage refused the event: ...``, the payload
the event as an export line, so ``import`` can bring it into an SQLite store), in the same
transaction as its batch and the batch's place: counted once in ``refused``, never twice, and
the copy goes on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import msgspec
import peewee

from sidecar.config import DatabaseConfig
from sidecar.core.events import DEAD_LETTER_COLUMNS, DeadLetterRow, now_ms
from sidecar.errors import StorageError, UsageError
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects
from sidecar.storage.reads import open_reader
from sidecar.storage.sqlite_errors import retry_busy
from sidecar.storage.startup import open_store
from sidecar.storage.transfer import (
    EXPORT_COLUMNS,
    ExportedEvent,
    ExportedKv,
    import_kv_entry,
    insert_exported,
)

log = get_logger("sidecar.copy")

ProgressFn = Callable[[int, int], None]  # (rows done, rows in the source)
_EVENT_COLUMNS = EXPORT_COLUMNS  # seq first, then what the target inserts
_DEAD_COLUMNS = ("id", *DEAD_LETTER_COLUMNS)
# per (source database, table): the last source key (events.seq, dead_letters.id) copied
_PROGRESS_TABLE = ('CREATE TABLE IF NOT EXISTS "copy_progress" ("source" TEXT NOT NULL, '
                   '"table_name" TEXT NOT NULL, "last_key" BIGINT NOT NULL, '
                   '"updated_at" BIGINT NOT NULL, PRIMARY KEY ("source", "table_name"))')


class CopyResult(NamedTuple):
    events: int  # source events read in this run
    inserted: int  # of those, new to the target
    dead_letters: int
    kv_written: int
    resumed_after: int  # the source seq this run started after (0: from the start)
    seconds: float
    refused: int = 0  # source events the target cannot hold: dead letters there (see the module)


def copy_store(source: DatabaseConfig, target: DatabaseConfig, *, batch_size: int = 2000,
               progress: ProgressFn | None = None) -> CopyResult:
    """Copy every event, dead letter and key-value entry of ``source`` into ``target`` (created
    and migrated if need be); resumable and idempotent (see the module)."""
    if _same(source.url, target.url):
        raise UsageError("--from and --to name the same database", option="--to")
    started = time.monotonic()
    src = open_reader(source)
    dst = open_store(target, schema="migrate", shared=True)
    name = dialects.masked_url(source.url)
    try:
        dst.execute_sql(_PROGRESS_TABLE)
        after = _progress(dst, name, "events")
        total = _scalar(src, "SELECT count(*) FROM events")
        done = _scalar(src, f"SELECT count(*) FROM events WHERE seq <= {src.param}", (after,))
        events = inserted = refused = 0
        holds_nul = dialects.of(dst).holds_nul
        sql = (f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE seq > {src.param} "
               f"ORDER BY seq LIMIT {int(batch_size)}")
        last = after
        while True:
            rows = src.execute_sql(sql, (last,)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            letters = {} if holds_nul else _refused(rows)
            batch = [tuple(row[1:]) for row in rows if not letters or row[0] not in letters]
            inserted += _write(dst, name, "events", last,
                               partial(_insert_events, dst, batch, list(letters.values())))
            refused += len(letters)
            events += len(rows)
            if progress is not None:
                progress(done + events, total)
        dead = _copy_dead_letters(src, dst, name, batch_size)
        kv_written = _copy_kv(src, dst)
    finally:
        src.close()
        dst.close()
    result = CopyResult(events, inserted, dead, kv_written, after,
                        round(time.monotonic() - started, 2), refused)
    log.info("copy_finished", source=name, target=dialects.masked_url(target.url),
             events=events, inserted=inserted, refused=refused, dead_letters=dead,
             kv_written=kv_written, resumed_after=after, seconds=result.seconds)
    return result


# a JSON \u0000 escape: after an even number of backslashes (``\\u0000`` is a backslash, then text)
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_TEXT_FIELDS = [(i, c) for i, c in enumerate(_EVENT_COLUMNS) if c not in ("seq", "created_at",
                                                                       "received_at")]


def nul_field(row: tuple[Any, ...]) -> str | None:
    """The first field of an event row (``EXPORT_COLUMNS``) that holds U+0000, or ``None``."""
    for i, column in _TEXT_FIELDS:
        value = row[i]
        if not isinstance(value, str):
            continue
        if "\x00" in value or (column in ("payload", "metadata") and "\\u0000" in value
                                and _JSON_NUL.search(value)):
            return column
    return None


def _refused(rows: list[tuple[Any, ...]]) -> dict[int, tuple[Any, ...]]:
    """The rows a PostgreSQL target cannot hold, by source seq, as dead-letter rows."""
    letters: dict[int, tuple[Any, ...]] = {}
    for row in rows:
        column = nul_field(row)
        if column is None:
            continue
        reason = (f"storage refused the event: the target cannot hold U+0000 (NUL), "
                  f"found in {column} (copied from source seq {row[0]})")
        event = ExportedEvent(**{c: v for c, v in zip(_EVENT_COLUMNS, row, strict=True)
                                 if c not in ("payload", "metadata")},
                              payload=msgspec.Raw(row[5].encode()),
                              metadata=msgspec.Raw(row[6].encode()))
        raw = msgspec.json.encode(event)
        topic = row[2].replace("\x00", "\\u0000")
        letters[row[0]] = tuple(DeadLetterRow(topic, raw, len(raw), reason, row[8]))
        log.warning("copy_event_refused", seq=row[0], id=row[1].replace("\x00", "\\u0000"),
                    field=column, reason="the target cannot hold U+0000")
    return letters


def _insert_events(dst: peewee.Database, batch: list[tuple[Any, ...]],
                   letters: list[tuple[Any, ...]]) -> int:
    """The batch's events, and the dead letters of the events the target refused."""
    inserted = insert_exported(dst, batch) if batch else 0
    if letters:
        dst.cursor().executemany(_DEAD_INSERT.replace("?", dst.param), letters)
    return inserted


_DEAD_INSERT = (f"INSERT INTO dead_letters ({', '.join(DEAD_LETTER_COLUMNS)}) VALUES "
                f"({', '.join(['?'] * len(DEAD_LETTER_COLUMNS))})")


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _scalar(db: peewee.Database, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(db.execute_sql(sql, params).fetchone()[0] or 0)


def _progress(dst: peewee.Database, source: str, table: str) -> int:
    row = dst.execute_sql(f"SELECT last_key FROM copy_progress WHERE source = {dst.param} AND "
                          f"table_name = {dst.param}", (source, table)).fetchone()
    return int(row[0]) if row else 0


def _write(dst: peewee.Database, source: str, table: str, last: int,
           insert: Callable[[], int]) -> int:
    """``insert()`` and the new place of ``table`` in one transaction of the target."""
    p = dst.param

    def transaction() -> int:
        with dst.atomic("IMMEDIATE"):
            written = insert()
            dst.execute_sql(
                f"INSERT INTO copy_progress (source, table_name, last_key, updated_at) VALUES "
                f"({p}, {p}, {p}, {p}) ON CONFLICT (source, table_name) DO UPDATE SET "
                "last_key = excluded.last_key, updated_at = excluded.updated_at",
                (source, table, last, now_ms()))
            return written

    try:
        return retry_busy(transaction, what=f"copy {table}", path=dialects.masked_url(
            str(getattr(dst, "database", ""))))
    except peewee.DatabaseError as exc:
        raise StorageError(f"copy: the target refused a batch of {table}: {exc}".splitlines()[0],
                           path=str(dst.database)) from exc


def _copy_dead_letters(src: peewee.Database, dst: peewee.Database, source: str,
                       batch_size: int) -> int:
    after = _progress(dst, source, "dead_letters")
    sql = (f"SELECT {', '.join(_DEAD_COLUMNS)} FROM dead_letters WHERE id > {src.param} "
           f"ORDER BY id LIMIT {int(batch_size)}")
    insert = (f"INSERT INTO dead_letters ({', '.join(DEAD_LETTER_COLUMNS)}) VALUES "
              f"({', '.join([dst.param] * len(DEAD_LETTER_COLUMNS))})")
    copied = 0
    while True:
        rows = src.execute_sql(sql, (after,)).fetchall()
        if not rows:
            return copied
        batch = [(r[1], bytes(r[2]), *r[3:]) for r in rows]
        after = rows[-1][0]

        def insert_batch(b: list[tuple[Any, ...]] = batch) -> int:
            dst.cursor().executemany(insert, b)
            return len(b)

        copied += _write(dst, source, "dead_letters", after, insert_batch)


def _copy_kv(src: peewee.Database, dst: peewee.Database) -> int:
    rows = src.execute_sql("SELECT key, value, version, updated_at FROM kv_store "
                           "ORDER BY key").fetchall()
    return sum(import_kv_entry(dst, ExportedKv(key=k, value=msgspec.Raw(v.encode()), version=ver,
                                               updated_at=at)) for k, v, ver, at in rows)
