"""Peewee migrations -- 002_events_type_seq.py: index events (type, seq).

A query for one type (or a glob, expanded to the stored types it matches) reads its newest or
oldest page in ``seq`` order straight from this index: with only (type, created_at) SQLite
sorted every event of the type first (30 ms for a common type at 1,000,000 events, 0.2 ms
now; BENCHMARKS.md). Built once at start-up on an existing database (about 0.6 s per million
events).
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql("CREATE INDEX IF NOT EXISTS events_type_seq ON events (type, seq)")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql("DROP INDEX IF EXISTS events_type_seq")
