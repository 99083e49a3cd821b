"""Event keys: finding events by id, correlation, causation or trace id, or type, through
``event_keys``, and indexing new events into it in large batches.

``event_keys`` is a contentless FTS5 table (rowid = the event's ``seq``; migration 004): an LSM
inside SQLite. A B-tree keyed by a random value (a UUID) dirties one 4 KiB page per event on
every commit; FTS5 appends one sorted segment per insert and merges segments in large steps.

Each key of an event is one token, the kind's letter and the hex of the value's UTF-8 bytes
(hex, so the tokenizer keeps any value one token): ``i`` id, ``c`` correlation_id,
``a`` causation_id, ``t`` trace_id, ``y`` type (migration 005: a type's events in ``seq`` order
without the B-tree indexes on the type).

Deferred indexing (migration 009): a new event is not indexed in its own commit. Small
segments, one per commit, were most of what a commit at 10 ev/s wrote (pages written, then
freed by the next merge; BENCHMARKS.md, "SD-card wear: deferred keys"). ``catch_up`` indexes
every event above the watermark ``event_keys_state.indexed_upto`` in ``seq`` order and moves
the watermark, in the caller's transaction: the writer does it when ``KEYS_BATCH`` events are
waiting, at start and at a clean stop; import and dead-letter re-ingest at their end. Nothing
else moves the watermark, and it only grows. Every event with ``seq <= indexed_upto`` has its
tokens in ``event_keys``; none above it has (the delete trigger deletes only indexed tokens).

Lookups see the tail: each reads ``event_keys`` with ``rowid <= watermark`` and the rows with
``seq > watermark`` directly (a rowid range of about ``KEYS_BATCH`` rows), the watermark read
by a scalar subquery in the same statement, so both arms see one snapshot; an older watermark
would be as correct (rows exist in ``events`` whether indexed or not). Everything that looks a
key up goes through here: the writer's dedupe and conflict check (a redelivery of an event
still in the tail is caught), import, dead-letter re-ingest, get by id, the id filters of a
query, and a type's pages (``storage.queries``).

On PostgreSQL (``dialect.fts_keys`` false) there is no ``event_keys``: the same lookups read
B-tree indexes on the columns (a UNIQUE one on ``id``; migrations 001 and 004), and there is
nothing to catch up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import peewee

from models import Event
from sidecar.logs import get_logger
from sidecar.storage.dialect import Rendered, of, of_cursor

log = get_logger("sidecar.keys")

TABLE = "event_keys"
KINDS = {"id": "i", "correlation_id": "c", "causation_id": "a", "trace_id": "t", "type": "y"}
FILTERS = ("correlation_id", "causation_id", "trace_id")  # the id filters of a query
CHUNK = 500  # keys per lookup: one batch of the writer in one query
KEYS_BATCH = 1000  # the writer indexes the tail once it holds this many events
START_CHUNK = 50_000  # events indexed per transaction when catching up at start

# The watermark, as a scalar subquery: read once per statement, from the statement's snapshot.
WATERMARK = "(SELECT indexed_upto FROM event_keys_state)"

# The tokens of the row ``r`` of events: the SQL counterpart of ``token`` (upper-case hex; the
# tokenizer folds case).
_TOKENS = ("'i' || hex(r.id)"
           " || CASE WHEN r.correlation_id IS NULL THEN '' ELSE ' c' || hex(r.correlation_id) END"
           " || CASE WHEN r.causation_id IS NULL THEN '' ELSE ' a' || hex(r.causation_id) END"
           " || CASE WHEN r.trace_id IS NULL THEN '' ELSE ' t' || hex(r.trace_id) END"
           " || ' y' || hex(r.type)")
_INDEX = (f"INSERT INTO {TABLE} (rowid, k) SELECT r.seq, {_TOKENS} FROM events r "
          "WHERE r.seq > ? AND r.seq <= ? ORDER BY r.seq")
_TOP = "SELECT max(seq) FROM (SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT ?)"

_INDEXED = f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? AND rowid <= {WATERMARK}"
_FIELDS = "id, seq, type, source, payload, metadata"
_STORED = (f"SELECT {_FIELDS} FROM events WHERE seq IN ({_INDEXED}) UNION ALL "
           f"SELECT {_FIELDS} FROM events WHERE seq > {WATERMARK} "
           "AND id IN (SELECT value FROM json_each(?))")
_json = msgspec.json.Encoder()
_STORED_BY_COLUMN = ("SELECT id, seq, type, source, payload::text, metadata::text FROM events "
                     "WHERE id = ANY(%s)")


def token(kind: str, value: str) -> str:
    """The token ``event_keys`` holds for ``value`` of ``kind`` (a column name in ``KINDS``)."""
    return KINDS[kind] + value.encode("utf-8", "surrogatepass").hex()


def match(kind: str, values: Iterable[str]) -> str:
    """An FTS5 query matching the events holding any of ``values`` as ``kind``."""
    return " OR ".join(f'"{token(kind, value)}"' for value in values)


def seq_term(kind: str, value: str) -> peewee.ColumnBase:
    """``seq IN (the indexed rowids matching value, and the tail's rows holding it)`` AND the
    column equal to ``value``: a query term that reads only the matching events (a few rowid
    lookups, plus the tail's rows), exact as the column itself."""
    column = getattr(Event, kind)
    tail = f"SELECT seq FROM events WHERE seq > {WATERMARK} AND {kind} = ?"

    def build(dialect: Any) -> peewee.Node:
        if not dialect.fts_keys:
            return column == value  # a B-tree index on the column
        return Event.seq.in_(peewee.SQL(f"({_INDEXED} UNION ALL {tail})",
                                        [match(kind, [value]), value])) & (column == value)

    return Rendered(build)


def stored_events(cursor: Any, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``id -> (seq, type, source, payload, metadata)`` of the stored events among ``ids``,
    indexed or in the tail (one query per ``CHUNK`` ids; in the caller's transaction, so it
    sees its own inserts)."""
    wanted = sorted(set(ids))
    stored: dict[str, tuple[Any, ...]] = {}
    if not of_cursor(cursor).fts_keys:
        for start in range(0, len(wanted), CHUNK):
            cursor.execute(_STORED_BY_COLUMN, (wanted[start:start + CHUNK],))
            for id_, *rest in cursor.fetchall():
                stored[id_] = tuple(rest)
        return stored
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start:start + CHUNK]
        present = set(chunk)
        params = (match("id", chunk), _json.encode(chunk).decode("utf-8", "surrogatepass"))
        for id_, *rest in cursor.execute(_STORED, params).fetchall():
            if id_ in present:
                stored[id_] = tuple(rest)
    return stored


def seq_of(cursor: Any, event_id: str) -> int | None:
    """The ``seq`` of the stored event ``event_id``, or None."""
    found = stored_events(cursor, [event_id]).get(event_id)
    return None if found is None else int(found[0])


def indexed_upto(cursor: Any) -> int:
    """The watermark: every event up to this ``seq`` is in ``event_keys``, none above it."""
    return int(cursor.execute("SELECT indexed_upto FROM event_keys_state").fetchone()[0])


def unindexed(cursor: Any) -> int:
    """How far the newest event is past the watermark (about how many events wait)."""
    row = cursor.execute("SELECT coalesce((SELECT max(seq) FROM events), 0) - indexed_upto "
                         "FROM event_keys_state").fetchone()
    return max(0, int(row[0]))


def catch_up(cursor: Any, *, limit: int | None = None) -> int:
    """Index the events above the watermark (the first ``limit`` of them, if given) in ``seq``
    order and move the watermark past them, in the caller's write transaction. Returns how
    many events were indexed (0 on PostgreSQL: no ``event_keys``)."""
    if not of_cursor(cursor).fts_keys:
        return 0
    done = indexed_upto(cursor)
    if limit is None:
        top = cursor.execute("SELECT max(seq) FROM events").fetchone()[0]
    else:
        top = cursor.execute(_TOP, (done, limit)).fetchone()[0]
    if top is None or top <= done:
        return 0
    indexed = cursor.execute("SELECT count(*) FROM events WHERE seq > ? AND seq <= ?",
                             (done, top)).fetchone()[0]
    cursor.execute(_INDEX, (done, top))
    cursor.execute("UPDATE event_keys_state SET indexed_upto = ?", (top,))
    return int(indexed)


def catch_up_all(db: peewee.Database, *, chunk: int = START_CHUNK, why: str) -> int:
    """Index every event above the watermark, ``chunk`` per transaction (a store left with a
    long tail by a crash, an old import or a seeding script); logged when there was any."""
    if not of(db).fts_keys:
        return 0
    total = 0
    while True:
        with db.atomic("IMMEDIATE"):
            done = catch_up(db.cursor(), limit=chunk)
        if not done:
            break
        total += done
    if total:
        log.info("event_keys_caught_up", events=total, why=why)
    return total
