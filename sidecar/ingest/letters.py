"""Dead letters: list them, show one, and re-ingest them once the publisher is fixed.

A dead letter is a message ingest refused (``dead_letters``: topic, the raw bytes capped at
``[ingest] dead_letter_max_bytes``, the original size, the reason, the receive time, and since
migration 003 the MQTT 5 content type and user properties the decode used).

Re-ingest runs the stored bytes through the same decoder as live ingest (``ingest.
decode_message``, with the configured ``max_payload_bytes``) and the writer's insert path
(``writer.EventInsert``: an id already stored is not inserted again, conflict check; their keys
are indexed at the end, ``keys.catch_up_all``). It is idempotent because
the dead letter is deleted **in the same transaction** that inserts its event: once committed
there is nothing left to re-ingest, and a second run (or a second process at the same time: the
transaction is ``IMMEDIATE`` and reads the dead letter inside it) finds no dead letter. So an
id-less event may get a fresh UUIDv7, as on live ingest, without ever becoming two rows. An
event whose id is already stored with the same body only loses its dead letter
(``already_stored``); a dead letter that still fails to decode, or conflicts with a stored id,
stays unchanged and the new reason is reported; a truncated one is never decoded.

Reads take a read-only connection (``reads.open_reader``); re-ingest takes a write connection
and waits out another process's lock (``busy.retry_busy``), so it runs beside the daemon.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import peewee

from models import DeadLetter
from sidecar.core import topics
from sidecar.core.events import uuid7
from sidecar.errors import FilterError, PayloadError, RequestError, StorageError
from sidecar.ingest.decode import decode_message, properties_from_json
from sidecar.ingest.writer import EventInsert
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects
from sidecar.storage import keys
from sidecar.storage.queries import topic_term
from sidecar.storage.sqlite_errors import describe, is_busy, retry_busy

log = get_logger("sidecar.letters")

_PROPERTY_COLUMNS = ("content_type", "user_properties")  # added by migration 003


class LetterFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which dead letters: ``topic`` an MQTT filter (``+``/``#``), ``reason`` a substring (case
    does not matter), ``since`` the earliest ``received_at`` (epoch ms)."""

    topic: str | None = None
    reason: str | None = None
    since: int | None = None


class LetterSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One line of ``dead-letters list``: everything but the bytes."""

    id: int
    received_at: int
    topic: str
    size: int  # the message's size as received
    truncated: bool  # fewer bytes were kept than received (dead_letter_max_bytes)
    reason: str


class Letter(msgspec.Struct, frozen=True, kw_only=True):
    """A whole dead letter (``dead-letters show``). ``payload`` is the stored bytes as text when
    they are UTF-8 (``encoding`` ``utf-8``), else base64 (``encoding`` ``base64``)."""

    id: int
    received_at: int
    topic: str
    size: int
    stored_bytes: int
    truncated: bool
    reason: str
    content_type: str | None
    user_properties: list[tuple[str, str]] | None
    encoding: str
    payload: str


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What re-ingest did with one dead letter.

    ``result``: ``stored`` (a new event, ``seq``/``event_id``; the dead letter is deleted),
    ``already_stored`` (the same event was stored already; the dead letter is deleted),
    ``failed`` (still refused: ``reason``; it stays), ``truncated`` (the bytes were capped: it
    stays), ``not_found`` (no dead letter with this id, e.g. re-ingested already)."""

    id: int
    result: str
    seq: int | None = None
    event_id: str | None = None
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.result in ("stored", "already_stored")


# ------------------------------------------------------------------------------ reading
def _columns(db: peewee.Database) -> set[str]:
    return {column.name for column in db.get_columns("dead_letters")}


def _property_fields(db: peewee.Database) -> list[Any]:
    """The property columns, or NULL for a file migrated before they existed."""
    present = _columns(db)
    return [getattr(DeadLetter, name) if name in present else peewee.SQL("NULL")
            for name in _PROPERTY_COLUMNS]


def _terms(flt: LetterFilter) -> list[Any]:
    terms: list[Any] = []
    if flt.topic is not None:
        problem = topics.filter_error(flt.topic)
        if problem:
            raise FilterError(f"topic: {problem}", field="topic")
        if "+" in flt.topic or "#" in flt.topic:
            terms.append(topic_term(DeadLetter.topic, flt.topic))
        else:
            terms.append(DeadLetter.topic == flt.topic)
    if flt.reason:
        needle = flt.reason.lower()
        terms.append(dialects.Rendered(
            lambda d: d.contains(peewee.fn.lower(DeadLetter.reason), needle)))
    if flt.since is not None:
        terms.append(DeadLetter.received_at >= flt.since)
    return terms


def _read(db: peewee.Database, query: peewee.Query) -> list[tuple[Any, ...]]:
    try:
        return list(retry_busy(lambda: db.execute(query).fetchall(), what="read dead letters",
                               path=str(db.database)))
    except (peewee.DatabaseError, sqlite3.Error) as exc:
        raise StorageError(f"cannot read dead letters from {db.database}: "
                           f"{describe(exc)[0]}", path=str(db.database)) from exc


def page(db: peewee.Database, flt: LetterFilter, *, limit: int,
         after: int | None = None) -> tuple[list[LetterSummary], int | None]:
    """Matching dead letters, newest first (keyset on ``id``: ``id < after``), and the cursor
    of the next page (``None`` at the end). ``db`` is a read connection (``open_reader``).
    ``FilterError`` for a topic filter that is not one, or a ``limit`` below 1."""
    if limit < 1:
        raise FilterError("limit: must be >= 1", field="limit")
    terms = _terms(flt)
    if after is not None:
        terms.append(DeadLetter.id < after)
    query = DeadLetter.select(DeadLetter.id, DeadLetter.received_at, DeadLetter.topic,
                              DeadLetter.payload_size, peewee.fn.length(DeadLetter.payload),
                              DeadLetter.reason)
    if terms:
        query = query.where(*terms)
    rows = _read(db, query.order_by(DeadLetter.id.desc()).limit(limit + 1).tuples())
    letters = [LetterSummary(id=r[0], received_at=r[1], topic=r[2], size=r[3],
                             truncated=(r[4] or 0) < r[3], reason=r[5]) for r in rows[:limit]]
    return letters, (letters[-1].id if len(rows) > limit else None)


def matching_ids(db: peewee.Database, flt: LetterFilter, *, chunk: int = 1000) -> Iterator[int]:
    """Every matching dead letter's id, oldest first, read a chunk at a time."""
    terms = _terms(flt)
    after = 0
    while True:
        query = DeadLetter.select(DeadLetter.id).where(*terms, DeadLetter.id > after)
        ids = [r[0] for r in _read(db, query.order_by(DeadLetter.id).limit(chunk).tuples())]
        yield from ids
        if len(ids) < chunk:
            return
        after = ids[-1]


def get(db: peewee.Database, letter_id: int) -> Letter:
    """The whole dead letter ``letter_id``; ``RequestError("not_found")`` if there is none."""
    query = DeadLetter.select(DeadLetter.id, DeadLetter.received_at, DeadLetter.topic,
                              DeadLetter.payload_size, DeadLetter.payload, DeadLetter.reason,
                              *_property_fields(db)).where(DeadLetter.id == letter_id).tuples()
    rows = _read(db, query)
    if not rows:
        raise RequestError("not_found", f"no dead letter with id {letter_id}", field="id")
    id_, received_at, topic, size, payload, reason, content_type, props = rows[0]
    data = bytes(payload or b"")
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return Letter(id=id_, received_at=received_at, topic=topic, size=size,
                  stored_bytes=len(data), truncated=len(data) < size, reason=reason,
                  content_type=content_type, user_properties=_pairs(props), encoding=encoding,
                  payload=text)


def _pairs(text: str | None) -> list[tuple[str, str]] | None:
    try:
        return properties_from_json(text)
    except (msgspec.DecodeError, TypeError, ValueError):
        return None  # not written by this sidecar: shown as none, never a crash


# ------------------------------------------------------------------------------ re-ingest
def reingest(db: peewee.Database, ids: Iterable[int], *, max_payload_bytes: int,
             deadline: float = 120.0) -> Iterator[Outcome]:
    """Re-ingest each dead letter of ``ids`` in its own transaction on ``db`` (a write
    connection, ``storage.startup.open_store``); yields one ``Outcome`` per id as it is committed."""
    insert = EventInsert(dialects.of(db))
    path = str(db.database)
    for letter_id in ids:
        def one(letter_id: int = letter_id) -> Outcome:
            return _reingest_one(db, insert, letter_id, max_payload_bytes)

        try:
            outcome = retry_busy(one, what="re-ingest a dead letter", deadline=deadline, path=path)
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            if is_busy(exc):
                raise
            raise StorageError(f"re-ingest of dead letter {letter_id} in {path} failed: "
                               f"{describe(exc)[0]}; nothing of it was written",
                               path=path) from exc
        log.info("dead_letter_reingested", dead_letter=letter_id, result=outcome.result,
                 seq=outcome.seq, event_id=outcome.event_id, reason=outcome.reason)
        yield outcome
    # The keys of the re-ingested events, now rather than at the daemon's next step.
    retry_busy(lambda: keys.catch_up_all(db, why="reingest"), what="index event keys",
               deadline=deadline, path=path)


def _sql(db: peewee.Database, query: peewee.Query) -> tuple[str, list[Any]]:
    """``query`` compiled for ``db`` (whatever database the models are bound to)."""
    sql, params = db.get_sql_context().sql(query).query()
    return sql, list(params)


def _reingest_one(db: peewee.Database, insert: EventInsert, letter_id: int,
                  max_payload_bytes: int) -> Outcome:
    fields = [DeadLetter.topic, DeadLetter.payload, DeadLetter.payload_size,
              DeadLetter.received_at, *_property_fields(db)]
    select_sql, select_params = _sql(db, DeadLetter.select(*fields)
                                     .where(DeadLetter.id == letter_id))
    with db.atomic("IMMEDIATE"):  # read, insert and delete under one write lock
        cursor = db.cursor()
        row = cursor.execute(select_sql, select_params).fetchone()
        if row is None:
            return Outcome(id=letter_id, result="not_found",
                           reason="no dead letter with this id (re-ingested or purged already?)")
        topic, payload, size, received_at, content_type, props = row
        data = bytes(payload or b"")
        if len(data) < size:
            return Outcome(id=letter_id, result="truncated", reason=(
                f"only {len(data)} of its {size} bytes were kept (dead_letter_max_bytes): it "
                "cannot be re-ingested; publish the message again"))
        try:
            event = decode_message(topic, data, received_at=received_at,
                                   max_payload_bytes=max_payload_bytes,
                                   content_type=content_type, user_properties=_pairs(props))
        except PayloadError as exc:
            return Outcome(id=letter_id, result="failed", reason=exc.reason)
        if event.id is None:
            event = event._replace(id=uuid7())  # safe: the dead letter goes in this transaction
        inserted, conflicts = insert.run(cursor, [event])
        if conflicts:
            return Outcome(id=letter_id, result="failed", reason=conflicts[0].reason)
        seq = keys.seq_of(cursor, event.id or "")
        delete_sql, delete_params = _sql(db, DeadLetter.delete().where(DeadLetter.id == letter_id))
        cursor.execute(delete_sql, delete_params)
    return Outcome(id=letter_id, result="stored" if inserted else "already_stored", seq=seq,
                   event_id=event.id)
