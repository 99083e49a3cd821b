"""Peewee migrations -- 004_event_keys.py: the random-valued keys move into one FTS5 table.

Each commit dirtied about one 4 KiB page per event in every B-tree keyed by a random value (the
UNIQUE index on ``events.id``, the partial indexes on ``correlation_id`` and ``trace_id``), and
each such page was written twice (WAL, then checkpoint): ~100x the event's size written to the
SD card (BENCHMARKS.md, "SD-card wear"). The keys now live in ``event_keys``, a contentless
FTS5 table (rowid = ``seq``): an LSM inside SQLite, where each commit appends one small sorted
segment and merges happen in large steps. One token per key: ``i<hex of id>``,
``c<hex of correlation_id>``, ``a<hex of causation_id>``, ``t<hex of trace_id>`` (hex of the
UTF-8 bytes, so the tokenizer keeps each key one token; ``sidecar.storage.keys`` builds the
same tokens to look them up).

``events`` is rebuilt to drop the UNIQUE constraint on ``id`` (the writer dedupes through
``event_keys`` now): rows are copied in ``seq`` order keeping every ``seq``, and
``sqlite_sequence`` keeps its value (a ``seq`` is never reused, even one deleted at the end).
Triggers keep ``event_keys`` in step with every insert and delete on ``events`` in the same
transaction, whichever code path writes (the writer, import, re-ingest, retention, the disk
guard); a contentless FTS5 table can only forget a row given its original tokens, which the
delete trigger has in ``old``. Runs in one transaction (peewee-migrate's); about 10 s per
million events.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator

# The tokens of one row (``r`` is ``new`` or ``old``): as sidecar.storage.keys at this version.
_TOKENS = ("'i' || hex({r}.id)"
           " || CASE WHEN {r}.correlation_id IS NULL THEN '' ELSE ' c' || hex({r}.correlation_id) END"
           " || CASE WHEN {r}.causation_id IS NULL THEN '' ELSE ' a' || hex({r}.causation_id) END"
           " || CASE WHEN {r}.trace_id IS NULL THEN '' ELSE ' t' || hex({r}.trace_id) END")

_COLUMNS = ("seq, id, topic, type, source, payload, metadata, created_at, received_at, "
            "correlation_id, causation_id, trace_id")

_EVENTS = (
    'CREATE TABLE "{name}" ("seq" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, '
    '"id" TEXT NOT NULL, "topic" TEXT NOT NULL, "type" TEXT NOT NULL, "source" TEXT NOT NULL, '
    '"payload" TEXT NOT NULL, "metadata" TEXT NOT NULL, "created_at" INTEGER NOT NULL, '
    '"received_at" INTEGER NOT NULL, "correlation_id" TEXT, "causation_id" TEXT, "trace_id" TEXT)'
)


def _postgres(database: pw.Database) -> bool:
    return isinstance(getattr(database, "obj", database), pw.PostgresqlDatabase)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if _postgres(database):
        # PostgreSQL keeps the B-tree indexes (no SD card): the UNIQUE index on id (the
        # writer's ON CONFLICT DO NOTHING), correlation_id and trace_id from 001, and causation_id.
        migrator.sql('CREATE INDEX IF NOT EXISTS "events_causation_id" ON "events" ("causation_id") '
                     'WHERE ("causation_id" IS NOT NULL)')
        return
    migrator.sql("CREATE TEMP TABLE _kairo_seq AS "
                 "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0) AS seq")
    migrator.sql(_EVENTS.format(name="events_004"))
    migrator.sql(f"INSERT INTO events_004 ({_COLUMNS}) SELECT {_COLUMNS} FROM events ORDER BY seq")
    migrator.sql("DROP TABLE events")  # and its indexes
    migrator.sql("ALTER TABLE events_004 RENAME TO events")
    migrator.sql("DELETE FROM sqlite_sequence WHERE name = 'events'")
    migrator.sql("INSERT INTO sqlite_sequence (name, seq) SELECT 'events', "
                 "max((SELECT seq FROM _kairo_seq), coalesce((SELECT max(seq) FROM events), 0))")
    migrator.sql("DROP TABLE _kairo_seq")
    migrator.sql('CREATE INDEX "events_type_created_at" ON "events" ("type", "created_at")')
    migrator.sql('CREATE INDEX "events_type_seq" ON "events" ("type", "seq")')
    migrator.sql('CREATE INDEX "events_created_at" ON "events" ("created_at")')
    migrator.sql("CREATE VIRTUAL TABLE event_keys USING fts5(k, content='', detail=none, "
                 "columnsize=0, tokenize='ascii')")
    migrator.sql(f"INSERT INTO event_keys (rowid, k) SELECT seq, {_TOKENS.format(r='events')} "
                 "FROM events ORDER BY seq")
    migrator.sql("INSERT INTO event_keys (event_keys) VALUES ('optimize')")
    migrator.sql("CREATE TRIGGER events_keys_insert AFTER INSERT ON events BEGIN "
                 f"INSERT INTO event_keys (rowid, k) VALUES (new.seq, {_TOKENS.format(r='new')}); END")
    migrator.sql("CREATE TRIGGER events_keys_delete AFTER DELETE ON events BEGIN "
                 "INSERT INTO event_keys (event_keys, rowid, k) "
                 f"VALUES ('delete', old.seq, {_TOKENS.format(r='old')}); END")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if _postgres(database):
        migrator.sql('DROP INDEX IF EXISTS "events_causation_id"')
        return
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_delete")
    migrator.sql("DROP TRIGGER IF EXISTS events_keys_insert")
    migrator.sql("DROP TABLE IF EXISTS event_keys")
    migrator.sql('CREATE UNIQUE INDEX "events_id" ON "events" ("id")')
    migrator.sql('CREATE INDEX "events_correlation_id" ON "events" ("correlation_id") '
                 'WHERE ("correlation_id" IS NOT NULL)')
    migrator.sql('CREATE INDEX "events_trace_id" ON "events" ("trace_id") '
                 'WHERE ("trace_id" IS NOT NULL)')
