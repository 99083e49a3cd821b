"""``latest``: the newest event per distinct value of a JSON path (``payload.name``).

Keyset-paged by the key value (SQLite's order: numbers before text), never by ``seq``: a page
is the keys after ``after``, each with its newest matching event (largest ``seq``). Events
without the path (or with JSON ``null`` there) have no key and are never answered.

With a path index (``storage.indexes``) the page is a skip scan: the next key is one seek in the
index, its newest matching event a walk down that key's entries from the top (one step when the
newest event of the key matches the filter). Without one it is a single ``GROUP BY`` over every
matching event (the answer says ``indexed: false``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import peewee

from models import Event
from sidecar.core import paths
from sidecar.storage.queries import Conditions, path_value

Key = str | int | float


class LatestKeys(NamedTuple):
    """One page of ``latest`` before the events are read: ``(key, seq)`` in key order, and
    whether more keys may follow."""

    keys: list[tuple[Key, int]]
    more: bool
    indexed: bool


def page_keys(db: peewee.Database, cond: Conditions, path: paths.JsonPath, *, limit: int,
              after: Key | None, indexed: bool) -> LatestKeys:
    """The first ``limit`` keys after ``after`` with their newest matching ``seq``. Run it in
    one read transaction (the caller's), so the page is one snapshot."""
    if indexed:
        found = _skip_scan(db, cond, path, limit=limit + 1, after=after)
    else:
        found = _grouped(db, cond, path, limit=limit + 1, after=after)
    return LatestKeys(found[:limit], len(found) > limit, indexed)


def _skip_scan(db: peewee.Database, cond: Conditions, path: paths.JsonPath, *, limit: int,
               after: Key | None) -> list[tuple[Key, int]]:
    value = path_value(path)
    found: list[tuple[Key, int]] = []
    cursor = after
    while len(found) < limit:
        bound = value.is_null(False) if cursor is None else value > cursor
        step = Event.select(value).where(bound).order_by(value).limit(1).tuples()
        row = db.execute(step).fetchone()
        if row is None:
            break
        key = row[0]
        newest = (Event.select(Event.seq).where(value == key, *cond.terms)
                  .order_by(Event.seq.desc()).limit(1).tuples())
        hit = db.execute(newest).fetchone()
        if hit is not None:
            found.append((key, hit[0]))
        cursor = key
    return found


def _grouped(db: peewee.Database, cond: Conditions, path: paths.JsonPath, *, limit: int,
             after: Key | None) -> list[tuple[Key, int]]:
    value = path_value(path)
    terms: list[Any] = [value.is_null(False), *cond.terms]
    if after is not None:
        terms.append(value > after)
    query = (Event.select(value, peewee.fn.MAX(Event.seq)).where(*terms)
             .group_by(value).order_by(value).limit(limit).tuples())
    return [(key, seq) for key, seq in db.execute(query).fetchall()]
