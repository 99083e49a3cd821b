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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import msgspec
import peewee

from models import Event
from sidecar.config import DatabaseConfig
from sidecar.core.decode_errors import describe
from sidecar.errors import InputFileError
from sidecar.logs import get_logger
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


# ------------------------------------------------------------------------------------ export
def export(db: peewee.SqliteDatabase, out: IO[bytes], terms: Iterable[Any] = (), *,
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
    cursor = retry_busy(lambda: db.execute(query), what="export events", path=str(db.database))
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
    out.flush()
    return written


# ------------------------------------------------------------------------------------ import
@dataclass
class ImportResult:
    lines: int
    inserted: int
    seconds: float

    @property
    def already_present(self) -> int:
        return self.lines - self.inserted


_INSERT_COLUMNS = EXPORT_COLUMNS[1:]  # never seq: this store numbers its own events
_INSERT = (f"INSERT INTO events ({', '.join(_INSERT_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})")


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


def open_for_import(config: DatabaseConfig) -> peewee.SqliteDatabase:
    """The database to import into (created and migrated if it does not exist yet); the
    daemon may be writing to it meanwhile."""
    return open_store(config, schema="migrate", shared=True)


def import_events(db: peewee.SqliteDatabase, lines: Iterable[bytes], *, batch_size: int = 1000,
                  source: str = "input", progress: Callable[[int], None] | None = None) -> ImportResult:
    """Insert every exported event of ``lines`` whose id is not stored, ``batch_size`` per transaction.
    A malformed line stops the import with an error naming it; the batches before it are kept
    (importing again is safe)."""
    started = time.monotonic()
    decoder = msgspec.json.Decoder(ExportedEvent)
    batch: list[tuple[Any, ...]] = []
    count = inserted = 0
    done_bytes = 0

    def flush() -> None:
        nonlocal inserted

        def write() -> int:
            with db.atomic("IMMEDIATE"):
                cursor = db.cursor()
                fresh = _not_stored(cursor, batch)
                cursor.executemany(_INSERT, fresh)
                return len(fresh)

        inserted += retry_busy(write, what="import events", path=str(db.database))
        batch.clear()

    for number, line in enumerate(lines, 1):
        done_bytes += len(line)
        if not line.strip():
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
    result = ImportResult(count, inserted, round(time.monotonic() - started, 2))
    log.info("import_finished", source=source, lines=count, inserted=inserted,
             already_present=result.already_present, seconds=result.seconds)
    return result
