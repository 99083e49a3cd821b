"""Peewee migrations -- 013_search_automerge.py: ``event_search`` merges sixteen segments at a time.

``event_search`` (migration 011) is an FTS5 index: every commit that stores events with search
on appends one small segment (the batch's terms), and FTS5 merges a level's segments into one
segment of the next level once the level holds ``automerge`` of them (FTS5's default: 4), so
every term is rewritten once per level it passes. With 16 it passes half as many levels: over
50,000 events written 50 per commit on a 200,000-event indexed store the bytes written per event
went from 7,831 (4) to 4,757 (``python -m bench.search wear --events 50000 --merge 16:64``;
BENCHMARKS.md, "Full-text search"). ``crisismerge`` 64 (FTS5's default: 16) keeps those merges
incremental: FTS5 merges a level whole, inside one commit, only once 64 new segments wait, and
with 16 a level reaching 16 segments would be merged whole at once.

Stored in the table (``event_search_config``): every connection and the merges already
pending; kept by ``delete-all`` (search turned off, a reindex); ``search.sync`` sets the same
when it creates the table again (a tokenizer change). Nothing is rewritten: instant.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


def _sqlite(database: pw.Database | pw.Proxy) -> bool:
    return isinstance(database.obj if isinstance(database, pw.Proxy) else database, pw.SqliteDatabase)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return  # no event_search on PostgreSQL (search is SQLite's for now)
    migrator.sql("INSERT INTO event_search (event_search, rank) VALUES ('automerge', 16)")
    migrator.sql("INSERT INTO event_search (event_search, rank) VALUES ('crisismerge', 64)")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return
    migrator.sql("INSERT INTO event_search (event_search, rank) VALUES ('automerge', 4)")
    migrator.sql("INSERT INTO event_search (event_search, rank) VALUES ('crisismerge', 16)")
