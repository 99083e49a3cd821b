"""A second event with a stored id but a different body: a conflict, kept as a dead letter.

The writer inserts only the first copy of an id that is not stored (``new_events``: one lookup
in ``event_keys`` per batch). For a redelivery that is right (the copy is the same event), but
an event that reuses a stored id with another body (a producer bug, two devices minting the
same id) would vanish without a trace. So the writer compares bodies, but only when it left an
event out: then one more lookup per 500 ids reads the stored bodies (the batch's own inserts
included); an event left out whose body differs becomes a dead letter with reason
``conflict: ...`` in the same transaction, holding the refused event as JSON.

The body is ``type``, ``source``, ``payload`` and ``metadata`` (which holds the event's own
timestamp), compared as JSON values: the same event sent once as JSON and once as MessagePack
is the same body. The topic is routing, not body; ``received_at`` differs on every delivery.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sidecar.core.events import DeadLetterRow, EventRow
from sidecar.logs import RateLimited, get_logger
from sidecar.storage import keys

log = get_logger("sidecar.conflicts")

DEAD_LETTER_BYTES = 65536  # the refused event kept in the dead letter (as the writer's isolation)
_log = RateLimited(period=10.0, burst=10)


def _same_json(a: str, b: str) -> bool:
    """Equal JSON values, numbers compared exactly (``Decimal``): PostgreSQL returns a JSONB
    number as its exact decimal (``1e999`` comes back as 1 and 999 zeros), which a float
    would read as another value (``inf``)."""
    if a == b:
        return True
    try:
        return bool(json.loads(a, parse_float=Decimal) == json.loads(b, parse_float=Decimal))
    except ValueError:
        return False


def same_body(row: EventRow, stored: Sequence[Any]) -> bool:
    """``stored`` is ``(seq, type, source, payload, metadata)`` of the row holding ``row.id``."""
    _, type_, source, payload, metadata = stored
    return (row.type == type_ and row.source == source and _same_json(row.payload, payload)
            and _same_json(row.metadata, metadata))


def refused_event_json(row: EventRow) -> bytes:
    """The refused event as a Kairo envelope (its payload and metadata as they were stored)."""
    head = json.dumps({"id": row.id, "type": row.type, "source": row.source}, ensure_ascii=False)
    text = f'{head[:-1]},"payload":{row.payload},"metadata":{row.metadata}}}'
    return text.encode("utf-8", "backslashreplace")


def new_events(cursor: sqlite3.Cursor, events: Sequence[EventRow]) -> list[EventRow]:
    """The first copy of each id among ``events`` that is not stored yet (one lookup in
    ``event_keys`` per batch): what the insert writes. The others are redeliveries or
    conflicts (``find_conflicts``, once they are inserted)."""
    stored = keys.stored_events(cursor, [row.id for row in events if row.id is not None])
    seen: set[str] = set()
    fresh: list[EventRow] = []
    for row in events:
        if row.id is None or row.id in stored or row.id in seen:
            continue
        seen.add(row.id)
        fresh.append(row)
    return fresh


def find_conflicts(cursor: sqlite3.Cursor, events: Sequence[EventRow]) -> list[DeadLetterRow]:
    """The dead letters for those of ``events`` (not inserted: their id was stored, or came
    earlier in the same batch) whose id is stored with a different body."""
    stored = keys.stored_events(cursor, [row.id for row in events if row.id is not None])
    dead: list[DeadLetterRow] = []
    for row in events:
        found = stored.get(row.id) if row.id is not None else None
        if found is None or same_body(row, found):
            continue
        raw = refused_event_json(row)
        reason = (f"conflict: id {row.id!r:.300} is already stored (seq {found[0]}) with a "
                  "different body")
        dead.append(DeadLetterRow(topic=row.topic, payload=raw[:DEAD_LETTER_BYTES],
                                  payload_size=len(raw), reason=reason,
                                  received_at=row.received_at))
        allowed, suppressed = _log.allow()
        if allowed:
            log.warning("event_conflict", id=row.id, stored_seq=found[0], topic=row.topic,
                        suppressed=suppressed)
    return dead
