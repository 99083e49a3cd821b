"""Event keys: finding events by id, correlation, causation or trace id, or type, through
``event_keys``.

``event_keys`` is a contentless FTS5 table (rowid = the event's ``seq``; migration 004): an LSM
inside SQLite. A B-tree keyed by a random value (a UUID) dirties one 4 KiB page per event on
every commit; FTS5 appends one small sorted segment per commit and merges segments in large
steps, so the keys of a commit cost a page or two however random they are (BENCHMARKS.md,
"SD-card wear").

Each key of an event is one token, the kind's letter and the hex of the value's UTF-8 bytes
(hex, so the tokenizer keeps any value one token): ``i`` id, ``c`` correlation_id,
``a`` causation_id, ``t`` trace_id, ``y`` type (migration 005: a type's events in ``seq`` order
without the B-tree indexes on the type, which dirtied a leaf per type on every commit).
Triggers on ``events`` write and delete the tokens in the same transaction as the row (SQL
``hex()``, upper case; the tokenizer folds case), whatever code path inserts or deletes, so
this module only reads. Everything that looks a key up goes through here: the writer's dedupe
and conflict check, import, dead-letter re-ingest, get by id, the id filters of a query, and
a type's pages (``storage.queries``).

On PostgreSQL (``dialect.fts_keys`` false) there is no ``event_keys``: the same lookups read
B-tree indexes on the columns (a UNIQUE one on ``id``; migrations 001 and 004).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import peewee

from models import Event
from sidecar.storage.dialect import Rendered, of_cursor

TABLE = "event_keys"
KINDS = {"id": "i", "correlation_id": "c", "causation_id": "a", "trace_id": "t", "type": "y"}
FILTERS = ("correlation_id", "causation_id", "trace_id")  # the id filters of a query
CHUNK = 500  # keys per lookup: one batch of the writer in one query

_SEQS = f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ?"
_STORED = ("SELECT id, seq, type, source, payload, metadata FROM events "
           f"WHERE seq IN ({_SEQS})")
_STORED_BY_COLUMN = ("SELECT id, seq, type, source, payload::text, metadata::text FROM events "
                     "WHERE id = ANY(%s)")


def token(kind: str, value: str) -> str:
    """The token ``event_keys`` holds for ``value`` of ``kind`` (a column name in ``KINDS``)."""
    return KINDS[kind] + value.encode("utf-8", "surrogatepass").hex()


def match(kind: str, values: Iterable[str]) -> str:
    """An FTS5 query matching the events holding any of ``values`` as ``kind``."""
    return " OR ".join(f'"{token(kind, value)}"' for value in values)


def seq_term(kind: str, value: str) -> peewee.ColumnBase:
    """``seq IN (the rowids of event_keys matching value)`` AND the column equal to ``value``:
    a query term that reads only the matching events (a few rowid lookups), exact as the
    column itself."""
    column = getattr(Event, kind)

    def build(dialect: Any) -> peewee.Node:
        if not dialect.fts_keys:
            return column == value  # a B-tree index on the column
        return Event.seq.in_(peewee.SQL(f"({_SEQS})", [match(kind, [value])])) & (column == value)

    return Rendered(build)


def stored_events(cursor: Any, ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``id -> (seq, type, source, payload, metadata)`` of the stored events among ``ids``
    (one query per ``CHUNK`` ids; in the caller's transaction, so it sees its own inserts)."""
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
        for id_, *rest in cursor.execute(_STORED, (match("id", chunk),)).fetchall():
            if id_ in present:
                stored[id_] = tuple(rest)
    return stored


def seq_of(cursor: Any, event_id: str) -> int | None:
    """The ``seq`` of the stored event ``event_id``, or None."""
    found = stored_events(cursor, [event_id]).get(event_id)
    return None if found is None else int(found[0])
