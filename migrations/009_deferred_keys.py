"""Peewee migrations -- 009_deferred_keys.py: the keys of new events are indexed in large batches.

Until 008 a trigger wrote each event's tokens into ``event_keys`` in the event's own commit:
FTS5 then appends one small segment per commit and soon merges it away, so at 10 ev/s (50
events per 5 s commit) the keys were 10 of the 28 WAL frames a commit wrote, pages written and
then freed by merges (``python -m bench.wal_pages``; BENCHMARKS.md, "SD-card wear: deferred
keys").

Now ``events_keys_insert`` only adds the type to ``event_types`` (types stay immediate), and
the writer indexes new rows in one step every thousand events or so (``sidecar.storage.keys``).
``event_keys_state.indexed_upto`` is the watermark: every event with ``seq <= indexed_upto`` has
its tokens in ``event_keys``, none above it has. Lookups read ``event_keys`` up to the watermark
and the few rows above it directly. The delete trigger deletes only the tokens of indexed rows
(a contentless FTS5 'delete' of a rowid it does not hold corrupts it).

Every existing row is indexed (the old trigger did it), so the watermark starts at ``max(seq)``.
No row is rewritten: instant at any size.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator

# The tokens of one row (``r`` is ``new`` or ``old``): as sidecar.storage.keys at this version.
_TOKENS = ("'i' || hex({r}.id)"
           " || CASE WHEN {r}.correlation_id IS NULL THEN '' ELSE ' c' || hex({r}.correlation_id) END"
           " || CASE WHEN {r}.causation_id IS NULL THEN '' ELSE ' a' || hex({r}.causation_id) END"
           " || CASE WHEN {r}.trace_id IS NULL THEN '' ELSE ' t' || hex({r}.trace_id) END"
           " || ' y' || hex({r}.type)")

_WATERMARK = "(SELECT indexed_upto FROM event_keys_state)"


def _delete_trigger(migrator: Migrator, when: str) -> None:
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_delete")
    migrator.sql(f"CREATE TRIGGER events_keys_delete AFTER DELETE ON events {when}BEGIN "
                 "INSERT INTO event_keys (event_keys, rowid, k) "
                 f"VALUES ('delete', old.seq, {_TOKENS.format(r='old')}); END")


def _sqlite(database: pw.Database | pw.Proxy) -> bool:
    return isinstance(database.obj if isinstance(database, pw.Proxy) else database, pw.SqliteDatabase)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return  # event_keys is SQLite's FTS5: another database indexes its keys its own way
    migrator.sql("CREATE TABLE event_keys_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
                 "indexed_upto INTEGER NOT NULL)")
    migrator.sql("INSERT INTO event_keys_state (id, indexed_upto) "
                 "SELECT 1, coalesce(max(seq), 0) FROM events")
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_insert")
    migrator.sql("CREATE TRIGGER events_keys_insert AFTER INSERT ON events BEGIN "
                 "INSERT OR IGNORE INTO event_types (type) VALUES (new.type); END")
    _delete_trigger(migrator, f"WHEN old.seq <= {_WATERMARK} ")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return
    # Index the tail first: the triggers of 005 assume every row is indexed.
    migrator.sql(f"INSERT INTO event_keys (rowid, k) SELECT seq, {_TOKENS.format(r='events')} "
                 f"FROM events WHERE seq > {_WATERMARK} ORDER BY seq")
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_insert")
    migrator.sql("CREATE TRIGGER events_keys_insert AFTER INSERT ON events BEGIN "
                 f"INSERT INTO event_keys (rowid, k) VALUES (new.seq, {_TOKENS.format(r='new')}); "
                 "INSERT OR IGNORE INTO event_types (type) VALUES (new.type); END")
    _delete_trigger(migrator, "")
    migrator.sql("DROP TABLE IF EXISTS event_keys_state")
