"""The one way a process opens the database to write: verify, open, fold in the WAL, bring the
schema up to date (or refuse), set the vacuum mode.

The daemon (``run``) and every command that writes (``migrate``, ``import``, ``purge``,
``dead-letters reingest``) go through ``open_store``, so a file that is not SQLite (exit 3),
damaged (exit 6) or migrated by a newer version (exit 4) is refused the same way everywhere,
and left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import peewee

from sidecar.config import DatabaseConfig
from sidecar.errors import PendingMigrationsError
from sidecar.storage.cipher import database_key
from sidecar.storage.db import check_schema, is_sqlite, migrate, open_database, sqlite_path
from sidecar.storage.integrity import verify_on_start
from sidecar.storage.maintenance import ensure_incremental_vacuum, release_free_pages, truncate_wal
from sidecar.storage.sqlite_errors import retry_busy

Schema = Literal["migrate", "current", "unchecked"]


def open_store(config: DatabaseConfig, *, schema: Schema, create: bool = True, shared: bool = False,
               on_migrated: Callable[[list[str]], None] | None = None,
               on_verified: Callable[[float], None] | None = None) -> peewee.Database:
    """Open the database of ``config`` for writing, with its models bound to it.

    ``schema``: ``"migrate"`` applies pending migrations; ``"current"`` refuses a file that
    needs some (``PendingMigrationsError``); ``"unchecked"`` leaves the schema unread. Every
    check refuses a file migrated by a newer version (``SchemaTooNewError``). ``create=False``
    refuses a file that does not exist instead of creating it. ``on_migrated`` is given the
    names of the migrations applied (``[]`` if none were pending); ``on_verified`` when the
    whole file was last checked (``storage.cleanstop``; only where the check runs).

    A process that owns the file from start-up (``shared=False``: the daemon, ``migrate``)
    first runs the ``startup_check`` integrity check, folds in what a crash left in the WAL
    (TRUNCATE checkpoint), and after migrating switches the file to incremental vacuum once.
    A command that may run beside the daemon (``shared=True``) does none of these (they would
    wait on, or rewrite the file under, the daemon) and retries migrations while it is busy.

    On PostgreSQL none of the file-level steps apply (the server owns its files): the schema
    is checked or migrated as on SQLite (peewee-migrate's own transaction).
    """
    if not is_sqlite(config):
        db = open_database(config, create=create)
        try:
            applied = _bring_schema(db, schema, shared=True)
        except BaseException:
            db.close()
            raise
        if on_migrated is not None and schema == "migrate":
            on_migrated(applied)
        return db
    if not shared:
        checked_at = verify_on_start(sqlite_path(config.url), config.startup_check,
                                     database_key(config))
        if on_verified is not None:
            on_verified(checked_at)
    db = open_database(config, create=create)
    try:
        if not shared:
            truncate_wal(db, when="start")
        applied = _bring_schema(db, schema, shared=shared)
    except BaseException:
        db.close()
        raise
    if on_migrated is not None and schema == "migrate":
        on_migrated(applied)
    return db


def _bring_schema(db: peewee.Database, schema: Schema, *, shared: bool) -> list[str]:
    """Check or migrate the schema as ``schema`` says; the migrations applied."""
    if schema == "unchecked":
        return []
    if schema == "current":
        pending = check_schema(db)
        if pending:
            raise PendingMigrationsError(path=str(db.database), pending=pending)
        return []
    if shared:
        return retry_busy(lambda: migrate(db), what="apply migrations", path=str(db.database))
    applied = migrate(db)
    if ensure_incremental_vacuum(db) and applied:
        release_free_pages(db)
    return applied
