"""Online backup, JSON-lines export and idempotent import.

* ``backup``: SQLite's online backup API, in steps (for the progress bar) inside ONE read
  transaction on the source, so the copy is a consistent snapshot and never restarts however
  fast the daemon writes (WAL: the daemon goes on writing meanwhile). Written to a temporary
  file, checked, then renamed into place.
* ``export``: one JSON object per event and line, in ``seq`` order, with the same filters as
  queries (``queries.conditions``); ``payload`` and ``metadata`` are written byte for byte.
* ``import_events``: insert-or-ignore by event id, in batches: importing a file twice adds
  nothing. Imported events get new ``seq`` values (they are new to this store's replay cursor).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import peewee

from models import Event

from .busy import retry_busy
from .config import DatabaseConfig
from .db import check_is_sqlite, migrate, open_database, sqlite_path
from .decode_errors import describe
from .errors import DestinationExistsError, InputFileError, StorageError, UsageError
from .integrity import open_readonly
from .logs import get_logger

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


# ------------------------------------------------------------------------------------ backup
@dataclass
class BackupResult:
    dest: Path
    bytes: int
    pages: int
    events: int
    seconds: float


def backup(config: DatabaseConfig, dest: Path, *, force: bool = False, step_pages: int = 1024,
           progress: ProgressFn | None = None) -> BackupResult:
    """Copy the database of ``config`` to ``dest`` while the daemon keeps writing."""
    src = sqlite_path(config.url)
    check_is_sqlite(src)
    if not src.is_file():
        raise StorageError(f"database {src} does not exist", path=str(src))
    if dest.exists() and not force:
        raise DestinationExistsError(str(dest))
    if dest.exists() and dest.resolve() == src.resolve():
        raise UsageError("the backup must go to another file than the database", option="DEST")
    started = time.monotonic()
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    source = open_readonly(src, timeout=config.busy_timeout_ms / 1000)
    try:
        def snapshot() -> None:  # pin one snapshot for every step of the copy
            source.execute("BEGIN")
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()

        retry_busy(snapshot, what="start the backup", path=str(src))
        target = sqlite3.connect(partial, isolation_level=None)
        try:
            pages = 0

            def step(status: int, remaining: int, total: int) -> None:
                nonlocal pages
                pages = total
                if progress is not None:
                    progress(total - remaining, total)

            source.backup(target, pages=step_pages, progress=step)
            source.execute("COMMIT")
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            problems = target.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                raise StorageError(f"the backup copy failed its check: {problems[:3]}",
                                   path=str(dest))
            events = target.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            target.close()
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    result = BackupResult(dest, dest.stat().st_size, pages, events,
                          round(time.monotonic() - started, 2))
    log.info("backup_finished", dest=str(dest), bytes=result.bytes, events=events,
             seconds=result.seconds)
    return result


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
_INSERT = (f"INSERT OR IGNORE INTO events ({', '.join(_INSERT_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})")


def open_for_import(config: DatabaseConfig) -> peewee.SqliteDatabase:
    """The database to import into (created and migrated if it does not exist yet)."""
    db = open_database(config)
    retry_busy(lambda: migrate(db), what="apply migrations", path=str(db.database))
    return db


def import_events(db: peewee.SqliteDatabase, lines: Iterable[bytes], *, batch_size: int = 1000,
                  source: str = "input", progress: Callable[[int], None] | None = None) -> ImportResult:
    """Insert-or-ignore every exported event of ``lines``, ``batch_size`` per transaction.
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
                cursor.executemany(_INSERT, batch)
                return max(cursor.rowcount, 0)

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
    if progress is not None:
        progress(done_bytes)
    result = ImportResult(count, inserted, round(time.monotonic() - started, 2))
    log.info("import_finished", source=source, lines=count, inserted=inserted,
             already_present=result.already_present, seconds=result.seconds)
    return result
