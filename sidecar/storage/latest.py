"""``latest``: the newest event per distinct value of a JSON path (``payload.name``).

Keyset-paged by the key value, never by ``seq``: a page is the keys after ``after``, each with
its newest matching event (largest ``seq``). Events without the path (or with JSON ``null``
there) have no key and are never answered. The order is the engine's: SQLite's (numbers before
text), JSONB's on PostgreSQL (strings before numbers; there only strings and numbers are keys,
``Dialect.key_terms``).

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
from sidecar.storage import dialect as dialects
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


_KEY = "\x00kairo-latest-key\x00"  # stands for the key in SQL built once per page


def _prepared(db: peewee.Database, query: peewee.Query) -> tuple[str, list[Any], int]:
    """``query``'s SQL and parameters built once, and where the key's parameter is (building
    SQL through Peewee costs about a millisecond here; a page runs two queries per key)."""
    sql, params = db.get_sql_context().sql(query).query()
    return sql, list(params), params.index(_KEY)


def _run(db: peewee.Database, prepared: tuple[str, list[Any], int], key: Key) -> Any:
    sql, params, at = prepared
    params[at] = dialects.of(db).key_arg(key)
    return db.execute_sql(sql, params).fetchone()


def _skip_scan(db: peewee.Database, cond: Conditions, path: paths.JsonPath, *, limit: int,
               after: Key | None) -> list[tuple[Key, int]]:
    value = path_value(path)
    dialect = dialects.of(db)
    bound = dialect.key_value(_KEY)
    following = _prepared(db, Event.select(value).where(value > bound, *dialect.key_terms(value))
                          .order_by(value).limit(1))
    newest = _prepared(db, Event.select(Event.seq).where(value == bound, *cond.terms)
                       .order_by(Event.seq.desc()).limit(1))
    found: list[tuple[Key, int]] = []
    if after is None:
        row = db.execute(Event.select(value).where(*dialect.key_terms(value)).order_by(value)
                         .limit(1).tuples()).fetchone()
    else:
        row = _run(db, following, after)
    while row is not None and len(found) < limit:
        key = dialect.key_read(row[0])
        hit = _run(db, newest, key)
        if hit is not None:
            found.append((key, hit[0]))
        row = _run(db, following, key)
    return found


def _grouped(db: peewee.Database, cond: Conditions, path: paths.JsonPath, *, limit: int,
             after: Key | None) -> list[tuple[Key, int]]:
    value = path_value(path)
    dialect = dialects.of(db)
    terms: list[Any] = [*dialect.key_terms(value), *cond.terms]
    if after is not None:
        terms.append(value > dialect.key_value(dialect.key_arg(after)))
    query = (Event.select(value, peewee.fn.MAX(Event.seq)).where(*terms)
             .group_by(value).order_by(value).limit(limit).tuples())
    return [(dialect.key_read(key), seq) for key, seq in db.execute(query).fetchall()]
