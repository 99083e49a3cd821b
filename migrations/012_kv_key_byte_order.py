"""Peewee migrations -- 012_kv_key_byte_order.py: kv keys sort by their bytes on PostgreSQL too.

``kv/list`` pages by the primary key (``key > after ORDER BY key``). SQLite compares TEXT with
BINARY, the byte order of UTF-8 (code point order); PostgreSQL compares with the database's
collation, which on most servers is a language's (``en_US.UTF-8``: ``a/b`` before ``a/B``,
punctuation ignored at first), so the same keys came back in another order, and a prefix page
bounded by code points (``storage.kv``) could miss keys. ``COLLATE "C"`` is byte order; the
primary key index is rebuilt with it (a kv store is small: instant). Nothing changes on SQLite.
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


def _postgres(database: pw.Database | pw.Proxy) -> bool:
    target = database.obj if isinstance(database, pw.Proxy) else database
    return isinstance(target, pw.PostgresqlDatabase)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    if _postgres(database):
        migrator.sql('ALTER TABLE "kv_store" ALTER COLUMN "key" TYPE TEXT COLLATE "C"')


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    if _postgres(database):
        migrator.sql('ALTER TABLE "kv_store" ALTER COLUMN "key" TYPE TEXT COLLATE "default"')
