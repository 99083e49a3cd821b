"""Peewee migrations -- 007_kv_projected_seq.py: projections remember the event they folded.

``kv_store.seq`` is the ``seq`` of the event whose projection last wrote the row (NULL when a
``kv/put`` did: that write has its own ``kairo.kv.put`` event). ``kv/watch`` reads projected
changes by it (``seq > cursor``), through a partial index that holds only projected rows.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql('ALTER TABLE "kv_store" ADD COLUMN "seq" INTEGER')
    migrator.sql('CREATE INDEX "kv_store_seq" ON "kv_store" ("seq") WHERE "seq" IS NOT NULL')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql('DROP INDEX IF EXISTS "kv_store_seq"')
    migrator.sql('ALTER TABLE "kv_store" DROP COLUMN "seq"')
