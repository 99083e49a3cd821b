"""Peewee migrations -- 005_event_types.py: the type joins the keys in ``event_keys``.

After 004 the ``(type, seq)`` and ``(type, created_at)`` indexes were most of what a small commit
wrote: a type's entries go to the end of that type's range, in the middle of the B-tree, so each
commit dirtied a leaf (and, at a split, its siblings and parent) per distinct type in each of
the two: 17 of 31 WAL frames of a 10-event commit, 57 of 95 of a 100-event one, on a store of
1,000,000 events (``python -m bench.wal_pages``; BENCHMARKS.md, "SD-card wear: the type").

Now each event's type is one more token in ``event_keys`` (``y<hex of the type>``): a type's
events are read in ``seq`` order by streaming that token's rowids (``MATCH`` with a rowid
range and ``ORDER BY rowid``, a keyset page without a sort). ``event_types`` holds each stored
type once (a trigger adds new ones; a type whose events are all deleted stays listed), so a
glob expands to the stored types without scanning events. ``created_at`` becomes
``(created_at, type)``: keys that arrive in time order (one leaf per commit, as before), and a
time range with a type, and retention by age per type, filter the type inside the index.

``event_keys`` is rebuilt with the type tokens (a contentless FTS5 table cannot add tokens to
a row); ``events`` and every ``seq`` are untouched. One transaction (peewee-migrate's); about
10 s per million events.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator

# The tokens of one row (``r`` is ``new`` or ``old``): as sidecar.storage.keys at this version.
_TOKENS_004 = ("'i' || hex({r}.id)"
               " || CASE WHEN {r}.correlation_id IS NULL THEN '' ELSE ' c' || hex({r}.correlation_id) END"
               " || CASE WHEN {r}.causation_id IS NULL THEN '' ELSE ' a' || hex({r}.causation_id) END"
               " || CASE WHEN {r}.trace_id IS NULL THEN '' ELSE ' t' || hex({r}.trace_id) END")
_TOKENS = _TOKENS_004 + " || ' y' || hex({r}.type)"

_KEYS = ("CREATE VIRTUAL TABLE event_keys USING fts5(k, content='', detail=none, columnsize=0, "
         "tokenize='ascii')")


def _keys(migrator: Migrator, tokens: str) -> None:
    """Drop and rebuild ``event_keys`` and its triggers with ``tokens`` for each row."""
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_insert")
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_delete")
    migrator.sql("DROP TABLE IF EXISTS event_keys")
    migrator.sql(_KEYS)
    migrator.sql(f"INSERT INTO event_keys (rowid, k) SELECT seq, {tokens.format(r='events')} "
                 "FROM events ORDER BY seq")
    migrator.sql("INSERT INTO event_keys (event_keys) VALUES ('optimize')")
    migrator.sql("CREATE TRIGGER events_keys_delete AFTER DELETE ON events BEGIN "
                 "INSERT INTO event_keys (event_keys, rowid, k) "
                 f"VALUES ('delete', old.seq, {tokens.format(r='old')}); END")


def _postgres(database: pw.Database) -> bool:
    return isinstance(getattr(database, "obj", database), pw.PostgresqlDatabase)


_PG_TRIGGER = (
    "CREATE OR REPLACE FUNCTION kairo_event_type() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN INSERT INTO event_types (type) VALUES (NEW.type) ON CONFLICT DO NOTHING; "
    "RETURN NULL; END $$"
)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if _postgres(database):
        # event_types as on SQLite; (type, seq) stays (a type's pages in seq order), and the
        # time index becomes (created_at, type).
        migrator.sql("CREATE TABLE event_types (type TEXT NOT NULL PRIMARY KEY)")
        migrator.sql("INSERT INTO event_types (type) SELECT DISTINCT type FROM events")
        migrator.sql(_PG_TRIGGER)
        migrator.sql("CREATE TRIGGER events_type_insert AFTER INSERT ON events FOR EACH ROW "
                     "EXECUTE FUNCTION kairo_event_type()")
        migrator.sql("DROP INDEX IF EXISTS events_type_created_at")
        migrator.sql("DROP INDEX IF EXISTS events_created_at")
        migrator.sql('CREATE INDEX "events_created_at_type" ON "events" ("created_at", "type")')
        return
    _keys(migrator, _TOKENS)
    migrator.sql("CREATE TABLE event_types (type TEXT NOT NULL PRIMARY KEY) WITHOUT ROWID")
    migrator.sql("INSERT INTO event_types (type) SELECT DISTINCT type FROM events")
    migrator.sql("CREATE TRIGGER events_keys_insert AFTER INSERT ON events BEGIN "
                 f"INSERT INTO event_keys (rowid, k) VALUES (new.seq, {_TOKENS.format(r='new')}); "
                 "INSERT OR IGNORE INTO event_types (type) VALUES (new.type); END")
    migrator.sql("DROP INDEX IF EXISTS events_type_seq")
    migrator.sql("DROP INDEX IF EXISTS events_type_created_at")
    migrator.sql("DROP INDEX IF EXISTS events_created_at")
    migrator.sql('CREATE INDEX "events_created_at_type" ON "events" ("created_at", "type")')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if _postgres(database):
        migrator.sql("DROP INDEX IF EXISTS events_created_at_type")
        migrator.sql('CREATE INDEX "events_type_created_at" ON "events" ("type", "created_at")')
        migrator.sql('CREATE INDEX "events_created_at" ON "events" ("created_at")')
        migrator.sql("DROP TRIGGER IF EXISTS events_type_insert ON events")
        migrator.sql("DROP FUNCTION IF EXISTS kairo_event_type()")
        migrator.sql("DROP TABLE IF EXISTS event_types")
        return
    migrator.sql("DROP INDEX IF EXISTS events_created_at_type")
    migrator.sql('CREATE INDEX "events_type_created_at" ON "events" ("type", "created_at")')
    migrator.sql('CREATE INDEX "events_type_seq" ON "events" ("type", "seq")')
    migrator.sql('CREATE INDEX "events_created_at" ON "events" ("created_at")')
    _keys(migrator, _TOKENS_004)
    migrator.sql("CREATE TRIGGER events_keys_insert AFTER INSERT ON events BEGIN "
                 f"INSERT INTO event_keys (rowid, k) VALUES (new.seq, {_TOKENS_004.format(r='new')}); END")
    migrator.sql("DROP TABLE IF EXISTS event_types")
