"""Peewee migrations -- 006_kv_versions.py: ``kv_store`` becomes a compare-and-set store.

The table made by 001 (key, value, updated_at) was never written by the sidecar. Each key now
carries a ``version`` (1 at the first put, +1 per put) that ``kv/put`` and ``kv/delete`` compare
with ``if_version``. The table keeps its rowid (integrity
recovery reads every table by rowid windows). Rows a user may have put there by
hand are kept, at version 1.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator

_KV = ('CREATE TABLE "{name}" ("key" TEXT NOT NULL PRIMARY KEY, "value" TEXT NOT NULL, '
       '"version" INTEGER NOT NULL DEFAULT 1, "updated_at" BIGINT NOT NULL)')


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql(_KV.format(name="kv_store_006"))
    migrator.sql('INSERT INTO kv_store_006 ("key", "value", "version", "updated_at") '
                 'SELECT "key", "value", 1, "updated_at" FROM kv_store')
    migrator.sql("DROP TABLE kv_store")
    migrator.sql("ALTER TABLE kv_store_006 RENAME TO kv_store")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql('CREATE TABLE "kv_store_005" ("key" TEXT NOT NULL PRIMARY KEY, '
                 '"value" TEXT NOT NULL, "updated_at" BIGINT NOT NULL)')
    migrator.sql('INSERT INTO kv_store_005 ("key", "value", "updated_at") '
                 'SELECT "key", "value", "updated_at" FROM kv_store')
    migrator.sql("DROP TABLE kv_store")
    migrator.sql("ALTER TABLE kv_store_005 RENAME TO kv_store")
