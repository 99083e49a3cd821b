"""JSON-lines export and idempotent import (backup: ``storage.backup``).

* ``backup``: SQLite's online backup API, in steps (for the progress bar) inside ONE read
  transaction on the source, so the copy is a consistent snapshot and never restarts however
  fast the daemon writes (WAL: the daemon goes on writing meanwhile). Written to a temporary
  file, checked, then renamed into place.
* ``export``: one JSON object per event and line, in ``seq`` order, with the same filters as
  queries (``queries.conditions``); ``payload`` and ``metadata`` are written byte for byte.
* ``import_events``: an event whose id is stored is skipped (``keys``), in batches: importing
  a file twice adds nothing. Imported events get new ``seq`` values (they are new to this
  store's replay cursor); their keys are indexed at the end (``keys.catch_up_all``).
* The key-value store: an export without filters ends with one ``{"kv": {key, value, version,
  updated_at}}`` line per key; import writes an entry unless the key is stored at the same or
  a newer version (so importing twice changes nothing). Its history is in the exported
  ``kairo.kv.*`` events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import msgspec
import peewee

from models import Event, KVStore
from sidecar.config import DatabaseConfig
from sidecar.core.decode_errors import describe
from sidecar.errors import InputFileError
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects
from sidecar.storage import keys
from sidecar.storage.sqlite_errors import retry_busy
from sidecar.storage.startup import open_store

log = get_logger("sidecar.export")

ProgressFn = Callable[[int, int], None]  # (done, total)

EXPORT_COLUMNS = ("seq", "id", "topic", "type", "source", "payload", "metadata", "created_at",
                  "received_at", "correlation_id", "causation_id", "trace_id")


class ExportedEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of an export. ``payload``/``metadata`` are the stored JSON, verbatim."""

    seq: int | None = None
    id: str
    topic: str
    type: str
    source: str
    payload: msgspec.Raw
    metadata: msgspec.Raw
    created_at: int
    received_at: int
    correlation_id: str | None = None
    causation_id: str | None = None
    trace_id: str | None = None


class ExportedKv(msgspec.Struct, kw_only=True):
    """A key-value entry in an export: the line ``{"kv": {...}}``."""

    key: str
    value: msgspec.Raw
    version: int
    updated_at: int


class _KvLine(msgspec.Struct):
    kv: ExportedKv


# ------------------------------------------------------------------------------------ export
def export(db: peewee.Database, out: IO[bytes], terms: Iterable[Any] = (), *,
           progress: ProgressFn | None = None, count_first: bool = False) -> int:
    """Write the events matching ``terms`` (Peewee expressions on ``Event``) to ``out`` as JSON
    lines, in ``seq`` order, from one snapshot; return how many."""
    columns = [getattr(Event, c) for c in EXPORT_COLUMNS]
    where = list(terms)
    query = Event.select(*columns)
    if where:
        query = query.where(*where)
    query = query.order_by(Event.seq).tuples()
    total = 0
    if count_first:
        counter = Event.select(peewee.fn.COUNT(Event.seq))
        if where:
            counter = counter.where(*where)
        total = retry_busy(lambda: db.execute(counter.tuples()).fetchone()[0], what="count events",
                           path=str(db.database))
    encoder = msgspec.json.Encoder()
    if dialects.of(db).files:
        cursor = retry_busy(lambda: db.execute(query), what="export events", path=str(db.database))
        written = _write_lines(cursor, out, encoder, progress, total)
    else:
        written = _export_streaming(db, query, out, encoder, progress, total)
    if not where:
        _export_kv(db, out, encoder)
    out.flush()
    return written


EXPORT_CURSOR = "kairo_export"  # the server-side cursor's name (PostgreSQL)


def _export_streaming(db: peewee.Database, query: peewee.Query, out: IO[bytes],
                      encoder: msgspec.json.Encoder, progress: ProgressFn | None,
                      total: int) -> int:
    """PostgreSQL: the rows through a server-side (named) cursor in one read transaction, 1000
    at a time, so an export of any size holds one batch in memory (psycopg2's ordinary cursor
    would fetch every row first)."""
    sql, params = db.get_sql_context().sql(query).query()
    conn = db.connection()
    conn.autocommit = False  # Peewee keeps psycopg2 in autocommit; a named cursor needs a transaction
    try:
        with conn.cursor(name=EXPORT_CURSOR) as cursor:
            cursor.itersize = 1000
            cursor.execute(sql, params)
            return _write_lines(cursor, out, encoder, progress, total)
    finally:
        conn.rollback()  # read only: nothing to keep
        conn.autocommit = True


def _write_lines(cursor: Any, out: IO[bytes], encoder: msgspec.json.Encoder,
                 progress: ProgressFn | None, total: int) -> int:
    written = 0
    buffer = bytearray()
    while True:
        rows = cursor.fetchmany(1000)
        if not rows:
            break
        for row in rows:
            event = ExportedEvent(
                seq=row[0], id=row[1], topic=row[2], type=row[3], source=row[4],
                payload=msgspec.Raw(row[5].encode()), metadata=msgspec.Raw(row[6].encode()),
                created_at=row[7], received_at=row[8], correlation_id=row[9],
                causation_id=row[10], trace_id=row[11])
            encoder.encode_into(event, buffer, -1)
            buffer += b"\n"
        out.write(buffer)
        buffer.clear()
        written += len(rows)
        if progress is not None:
            progress(written, total)
    return written


def _export_kv(db: peewee.Database, out: IO[bytes], encoder: msgspec.json.Encoder) -> None:
    """Every key-value entry, one ``{"kv": ...}`` line each, in key order."""
    query = KVStore.select(KVStore.key, KVStore.value, KVStore.version,
                           KVStore.updated_at).order_by(KVStore.key).tuples()
    cursor = retry_busy(lambda: db.execute(query), what="export kv", path=str(db.database))
    buffer = bytearray()
    for key, value, version, updated_at in cursor:
        encoder.encode_into(_KvLine(ExportedKv(key=key, value=msgspec.Raw(value.encode()),
                                               version=version, updated_at=updated_at)),
                            buffer, -1)
        buffer += b"\n"
    out.write(buffer)


# ------------------------------------------------------------------------------------ import
@dataclass
class ImportResult:
    lines: int
    inserted: int
    seconds: float
    kv_lines: int = 0
    kv_written: int = 0  # entries absent or at an older version here

    @property
    def already_present(self) -> int:
        return self.lines - self.inserted


_INSERT_COLUMNS = EXPORT_COLUMNS[1:]  # never seq: this store numbers its own events
_INSERT = (f"INSERT INTO events ({', '.join(_INSERT_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})")
# PostgreSQL: its parameter style, and the UNIQUE index on id settles a race with the daemon
_INSERT_VALUES_PG = (f"INSERT INTO events ({', '.join(_INSERT_COLUMNS)}) VALUES %s "
                    'ON CONFLICT ("id") DO NOTHING')


def _not_stored(cursor: Any, batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The first row of each id in ``batch`` whose id is not stored (``keys``: one lookup)."""
    stored = keys.stored_events(cursor, [row[0] for row in batch])
    seen: set[str] = set()
    fresh = []
    for row in batch:
        if row[0] not in stored and row[0] not in seen:
            seen.add(row[0])
            fresh.append(row)
    return fresh


def insert_exported(db: peewee.Database, batch: list[tuple[Any, ...]]) -> int:
    """Insert the rows of ``batch`` (``_INSERT_COLUMNS``) whose id is not stored, in the
    caller's write transaction; how many were new."""
    cursor = db.cursor()
    dialects.of(db).order_commits(cursor)  # seq order beside the daemon
    fresh = _not_stored(cursor, batch)
    if dialects.of(db).fts_keys:
        cursor.executemany(_INSERT, fresh)
    elif fresh:  # psycopg2's executemany is a round trip per row: multi-row VALUES instead
        from psycopg2.extras import execute_values

        execute_values(cursor, _INSERT_VALUES_PG, fresh, page_size=1000)
    return len(fresh)


def import_kv_entry(db: peewee.Database, entry: ExportedKv) -> int:
    """``entry`` written unless its key is stored at the same or a newer version: 1 if written."""
    return _import_kv(db, entry)


def _import_kv(db: peewee.Database, entry: ExportedKv) -> int:
    """Write ``entry`` unless its key is stored at the same or a newer version: 1 if written."""
    def write() -> int:
        with db.atomic("IMMEDIATE"):
            stored = db.execute(KVStore.select(KVStore.version).where(
                KVStore.key == entry.key).tuples()).fetchone()
            if stored is not None and stored[0] >= entry.version:
                return 0
            value = bytes(entry.value).decode()
            db.execute(KVStore.insert(key=entry.key, value=value, version=entry.version,
                                      updated_at=entry.updated_at).on_conflict(
                conflict_target=[KVStore.key],
                update={KVStore.value: value, KVStore.version: entry.version,
                        KVStore.updated_at: entry.updated_at}))
            return 1

    return retry_busy(write, what="import kv", path=str(db.database))


_KV_DECODER = msgspec.json.Decoder(_KvLine)


def open_for_import(config: DatabaseConfig) -> peewee.Database:
    """The database to import into (created and migrated if it does not exist yet); the
    daemon may be writing to it meanwhile."""
    return open_store(config, schema="migrate", shared=True)


def import_events(db: peewee.Database, lines: Iterable[bytes], *, batch_size: int = 1000,
                  source: str = "input", progress: Callable[[int], None] | None = None) -> ImportResult:
    """Insert every exported event of ``lines`` whose id is not stored, ``batch_size`` per transaction.
    A malformed line stops the import with an error naming it; the batches before it are kept
    (importing again is safe)."""
    started = time.monotonic()
    decoder = msgspec.json.Decoder(ExportedEvent)
    batch: list[tuple[Any, ...]] = []
    count = inserted = kv_lines = kv_written = 0
    done_bytes = 0

    def flush() -> None:
        nonlocal inserted

        def write() -> int:
            with db.atomic("IMMEDIATE"):
                return insert_exported(db, batch)

        inserted += retry_busy(write, what="import events", path=str(db.database))
        batch.clear()

    for number, line in enumerate(lines, 1):
        done_bytes += len(line)
        if not line.strip():
            continue
        if line.lstrip().startswith(b'{"kv"'):
            try:
                kv_entry = _KV_DECODER.decode(line).kv
            except msgspec.DecodeError as exc:
                raise InputFileError(f"{source}: line {number}: not an exported kv entry "
                                     f"({describe(exc, line, 'json')})") from None
            kv_lines += 1
            kv_written += _import_kv(db, kv_entry)
            continue
        try:
            event = decoder.decode(line)
        except msgspec.DecodeError as exc:
            if batch:
                flush()
            raise InputFileError(f"{source}: line {number}: not an exported event "
                                 f"({describe(exc, line, 'json')}); the "
                               f"{inserted} events before it were imported, importing again "
                               "is safe") from None
        batch.append((event.id, event.topic, event.type, event.source,
                      bytes(event.payload).decode(), bytes(event.metadata).decode(),
                      event.created_at, event.received_at, event.correlation_id,
                      event.causation_id, event.trace_id))
        count += 1
        if len(batch) >= batch_size:
            flush()
            if progress is not None:
                progress(done_bytes)
    if batch:
        flush()
    # The keys of the imported events, in chunks, now: the daemon would otherwise index them
    # a chunk per batch (``keys``).
    retry_busy(lambda: keys.catch_up_all(db, why="import"), what="index event keys",
               path=str(db.database))
    if progress is not None:
        progress(done_bytes)
    result = ImportResult(count, inserted, round(time.monotonic() - started, 2), kv_lines,
                          kv_written)
    log.info("import_finished", source=source, lines=count, inserted=inserted,
             already_present=result.already_present, kv_lines=kv_lines, kv_written=kv_written,
             seconds=result.seconds)
    return result
