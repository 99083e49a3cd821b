"""Peewee migrations -- 010_keys_automerge.py: ``event_keys`` merges sixteen segments at a time.

``event_keys`` (migration 004) is an FTS5 index: each catch-up (``sidecar.storage.keys``, 1,000
events) appends one segment, and FTS5 merges the segments of a level into one segment of the
next level once the level holds ``automerge`` of them (FTS5's default: 4). Every key is
rewritten once per level it passes through: at a million events, about five levels with 4,
about two and a half with 16. Over 200,000 events written 50 per commit on a 1,000,000-event
store, the bytes written per event went from 3,550 (4) to 2,466 (8) and 2,130 (16)
(``python -m bench.commit_wear --events 200000 --batches 50 --setup ...``; BENCHMARKS.md,
"SD-card wear: FTS5 automerge"). The cost: a lookup probes up to 15 segments per level instead
of 3, about 0.1 ms more per get by id (``python -m bench.keys_merge``).

The setting is stored in the table (``event_keys_config``): it applies to every connection and
to the merges already pending. Nothing is rewritten: instant at any size.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


def _sqlite(database: pw.Database | pw.Proxy) -> bool:
    return isinstance(database.obj if isinstance(database, pw.Proxy) else database, pw.SqliteDatabase)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return  # event_keys is SQLite's FTS5: PostgreSQL indexes its keys with B-trees
    migrator.sql("INSERT INTO event_keys (event_keys, rank) VALUES ('automerge', 16)")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if not _sqlite(database):
        return
    migrator.sql("INSERT INTO event_keys (event_keys, rank) VALUES ('automerge', 4)")
