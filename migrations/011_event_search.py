"""Peewee migrations -- 011_event_search.py: the full-text index of events, off until enabled.

``event_search`` is an FTS5 table with external content (rowid = the event's ``seq``): it holds
the index only, no copy of the text. Its content is the view ``event_search_content``, which
computes each event's text from ``events`` (``type``, ``source``, the strings of the payload)
for the indexed events only, so FTS5 reads the text it needs (snippets, 'delete', the
integrity check) from the event itself.

``event_search_state`` says which events are indexed: those with ``seq <= backfilled_to`` (the
existing events, indexed in steps by ``sidecar.storage.search.backfill``) and those with
``seq >= live_from`` (indexed by a trigger in the transaction that inserts them). Here search
is off: nothing indexed (``live_from`` beyond any seq) and no trigger; ``search.sync`` makes the
triggers and the view for the ``[search]`` config at start.

Instant at any size: an empty table, a view and one row.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator

_OFF = 4611686018427387904  # 2**62: live_from while search is off (no seq reaches it)
_BODY = ("CASE WHEN json_valid(e.payload) THEN (SELECT group_concat(value, ' ') "
         "FROM json_tree(e.payload) WHERE type = 'text') END")


def _sqlite(database: pw.Database | pw.Proxy) -> bool:
    return isinstance(database.obj if isinstance(database, pw.Proxy) else database, pw.SqliteDatabase)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return  # FTS5 is SQLite's: search is not available on PostgreSQL yet
    migrator.sql("CREATE TABLE event_search_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
                 "backfilled_to INTEGER NOT NULL, live_from INTEGER NOT NULL, "
                 "spec TEXT NOT NULL, tokenizer TEXT NOT NULL)")
    migrator.sql("INSERT INTO event_search_state (id, backfilled_to, live_from, spec, tokenizer) "
                 f"VALUES (1, 0, {_OFF}, '', 'unicode61 remove_diacritics 2')")
    migrator.sql("CREATE VIEW event_search_content AS SELECT e.seq AS seq, e.type AS type, "
                 f"e.source AS source, {_BODY} AS body FROM events e "
                 "WHERE e.seq <= (SELECT backfilled_to FROM event_search_state) "
                 "OR e.seq >= (SELECT live_from FROM event_search_state)")
    migrator.sql("CREATE VIRTUAL TABLE event_search USING fts5(type, source, body, "
                 "content='event_search_content', content_rowid='seq', "
                 "tokenize='unicode61 remove_diacritics 2')")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return
    migrator.sql("DROP TRIGGER IF EXISTS events_search_insert")
    migrator.sql("DROP TRIGGER IF EXISTS events_search_delete")
    migrator.sql("DROP TABLE IF EXISTS event_search")
    migrator.sql("DROP VIEW IF EXISTS event_search_content")
    migrator.sql("DROP TABLE IF EXISTS event_search_state")
