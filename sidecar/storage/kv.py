"""The key-value store on the database: reads, and the writes the writer thread applies.

``apply`` runs inside the caller's write transaction (the writer's; ``--db`` commands open
their own): it checks ``if_version``, writes ``kv_store`` and records the change as an event
(``kairo.kv.put`` / ``kairo.kv.delete``, payload ``{key, value?, version}``) in the same
transaction, so the history of every key can be replayed and the state never moves without
its event. Every query runs on the ``db`` given (never the database the models are bound to):
reads on a reader's connection, writes on the writer's, inside its transaction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import peewee

from models import Event, KVStore
from sidecar.core import kv
from sidecar.core.events import now_ms, uuid7
from sidecar.core.kv import KvEntry, KvWrite
from sidecar.errors import RequestError
from sidecar.storage import dialect as dialects


class KvPage(NamedTuple):
    """One page of ``list``: entries in key order; ``next`` is the ``after`` of the next page."""

    entries: list[KvEntry]
    next: str | None


_COLUMNS = (KVStore.key, KVStore.value, KVStore.version, KVStore.updated_at)


def get(db: peewee.Database, key: str) -> KvEntry | None:
    """The entry of ``key``, or ``None``."""
    row = db.execute(KVStore.select(*_COLUMNS).where(KVStore.key == key).tuples()).fetchone()
    return None if row is None else KvEntry(*row)


def _upper(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (code point order is
    SQLite's BINARY order of UTF-8), or ``None`` when there is none to write."""
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def page(db: peewee.Database, *, prefix: str = "", after: str | None = None,
         limit: int = 100) -> KvPage:
    """Up to ``limit`` entries whose key starts with ``prefix``, after the key ``after``, in key
    order: a keyset page read from the primary key."""
    query = KVStore.select(*_COLUMNS)
    if prefix:
        query = query.where(KVStore.key >= prefix,
                            peewee.fn.substr(KVStore.key, 1, len(prefix)) == prefix)
        upper = _upper(prefix)
        if upper is not None:
            query = query.where(KVStore.key < upper)
    if after is not None:
        query = query.where(KVStore.key > after)
    rows = db.execute(query.order_by(KVStore.key).limit(limit + 1).tuples()).fetchall()
    entries = [KvEntry(*row) for row in rows[:limit]]
    return KvPage(entries, entries[-1].key if len(rows) > limit else None)


def _conflict(write: KvWrite, current: KvEntry | None) -> RequestError:
    have = 0 if current is None else current.version
    state = "absent" if current is None else f"at version {have}"
    return RequestError("conflict", f"key {write.key!r:.300} is {state}, not at if_version "
                        f"{write.if_version}", field="if_version")


def apply(db: peewee.Database, write: KvWrite, *, topic_base: str,
          now: int | None = None) -> KvEntry | None:
    """Apply ``write`` in the caller's transaction and record its event. Returns the new entry
    (a put), the deleted one with ``value=None`` (a delete), or ``None`` when nothing changed
    (``same_is_noop``). Raises ``RequestError`` (``conflict``: stale ``if_version``;
    ``not_found``: delete of an absent key): the caller rolls back (nothing was written)."""
    at = now_ms() if now is None else now
    # PostgreSQL: the commit-order lock before the read, so that two sidecars of a group (or a
    # --db command) compare and set one after the other: no lost update at READ COMMITTED
    dialects.of(db).order_commits(db.cursor())
    current = get(db, write.key)
    if write.if_version is not None and write.if_version != (0 if current is None else current.version):
        raise _conflict(write, current)
    if write.op == "delete":
        if current is None:
            raise RequestError("not_found", f"no key {write.key!r:.300}", field="key")
        db.execute(KVStore.delete().where(KVStore.key == write.key))
        _record(db, kv.DELETE_EVENT, {"key": write.key, "version": current.version}, write.key,
                topic_base, at)
        return KvEntry(write.key, None, current.version, at)
    assert write.value is not None
    if write.same_is_noop and current is not None and current.value == write.value:
        return None
    version = 1 if current is None else current.version + 1
    db.execute(KVStore.insert(key=write.key, value=write.value, version=version,
                              updated_at=at).on_conflict(
        conflict_target=[KVStore.key],
        update={KVStore.value: write.value, KVStore.version: version, KVStore.updated_at: at,
                KVStore.seq: None}))
    _record(db, kv.PUT_EVENT, {"key": write.key, "value": msgspec.Raw(write.value.encode()),
                           "version": version}, write.key, topic_base, at)
    return KvEntry(write.key, write.value, version, at)


_SQL: dict[tuple[str, str], str] = {}  # the fold's two statements per dialect, built once


def _sql(db: peewee.Database, name: str) -> str:
    cached = (dialects.of(db).name, name)
    sql = _SQL.get(cached)
    if sql is None:
        if name == "get":
            query: peewee.Query = KVStore.select(*_COLUMNS).where(KVStore.key == "")
        else:
            query = KVStore.insert(key="", value="", version=0, updated_at=0, seq=0).on_conflict(
                conflict_target=[KVStore.key],
                preserve=[KVStore.value, KVStore.version, KVStore.updated_at, KVStore.seq])
        sql = _SQL[cached] = db.get_sql_context().sql(query).query()[0]
    return sql


def get_fast(db: peewee.Database, key: str) -> KvEntry | None:
    """``get`` with its SQL built once (the writer's fold reads a key per batch and key)."""
    row = db.execute_sql(_sql(db, "get"), (key,)).fetchone()
    return None if row is None else KvEntry(*row)


def write_projected(db: peewee.Database, entries: list[tuple[KvEntry, int]]) -> None:
    """A projection's writes: each ``(entry, seq)`` stored as is (``version`` computed by the
    fold: +1 per change, as a put), the row marked with the ``seq`` of the event folded, in the
    caller's transaction. No ``kairo.kv.put`` event: the event folded is the history. A later
    ``kv/put`` with ``if_version`` compares with these versions like any other."""
    if entries:
        db.cursor().executemany(_sql(db, "project"), [(e.key, e.value, e.version, e.updated_at, seq)
                                               for e, seq in entries])


def projected_since(db: peewee.Database, *, prefix: str, after: int,
                    upto: int) -> list[tuple[int, KvEntry]]:
    """``(seq, entry)`` of the rows a projection changed with ``after < seq <= upto`` (their
    current state), under ``prefix``, in seq order: from the partial index ``kv_store_seq``."""
    query = KVStore.select(KVStore.seq, *_COLUMNS).where(
        KVStore.seq > after, KVStore.seq <= upto)
    if prefix:
        query = query.where(peewee.fn.substr(KVStore.key, 1, len(prefix)) == prefix)
    rows = db.execute(query.order_by(KVStore.seq, KVStore.key).tuples()).fetchall()
    return [(row[0], KvEntry(*row[1:])) for row in rows]


def count_prefix(db: peewee.Database, prefix: str) -> int:
    """How many keys start with ``prefix``."""
    query = KVStore.select(peewee.fn.COUNT(KVStore.key)).where(
        peewee.fn.substr(KVStore.key, 1, len(prefix)) == prefix)
    return int(db.execute(query.tuples()).fetchone()[0])


def delete_prefix(db: peewee.Database, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (non-empty), in the caller's transaction."""
    assert prefix
    query = KVStore.delete().where(KVStore.key >= prefix,
                                   peewee.fn.substr(KVStore.key, 1, len(prefix)) == prefix)
    upper = _upper(prefix)
    if upper is not None:
        query = query.where(KVStore.key < upper)
    return int(db.execute(query).rowcount)


def _record(db: peewee.Database, event_type: str, payload: dict[str, Any], key: str,
            topic_base: str, at: int) -> None:
    db.execute(Event.insert(id=uuid7(), topic=f"{topic_base}/kv/state/{key}", type=event_type,
                            source=kv.EVENT_SOURCE, payload=msgspec.json.encode(payload).decode(),
                            metadata="{}", created_at=at, received_at=at))


def apply_now(db: peewee.Database, write: KvWrite, *, topic_base: str) -> KvEntry | None:
    """``apply`` in its own write transaction (``--db`` commands: no daemon's writer)."""
    with db.atomic("IMMEDIATE"):
        return apply(db, write, topic_base=topic_base)
