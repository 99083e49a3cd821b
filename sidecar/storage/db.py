"""Opening the database: URL -> Peewee database with pragmas, migrations, schema checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee
from peewee_migrate import Router

import migrations
import models
from sidecar.config import DatabaseConfig
from sidecar.core import topics
from sidecar.errors import SchemaTooNewError, StorageError
from sidecar.logs import get_logger
from sidecar.storage import cipher
from sidecar.storage import dialect as dialects
from sidecar.storage.cipher import DatabaseKey
from sidecar.storage.dialect import MQTT_MATCH_FUNCTION, masked_url

log = get_logger("sidecar.db")

MIGRATIONS_DIR = Path(migrations.__file__).parent
SQLITE_HEADER = cipher.SQLITE_HEADER


def _mqtt_match(topic_filter: str | None, topic: str | None) -> int:
    if topic_filter is None or topic is None:
        return 0
    return int(topics.matches(topic_filter, topic))


class KairoSqliteDatabase(peewee.SqliteDatabase):
    """Peewee's SQLite database, carrying its dialect into every SQL context, with the topic
    filter function (``dialect.MQTT_MATCH_FUNCTION``) on every connection."""

    dialect = dialects.SQLITE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_function(_mqtt_match, MQTT_MATCH_FUNCTION, 2, deterministic=True)

    def get_context_options(self) -> dict[str, Any]:
        return {**super().get_context_options(), "dialect": self.dialect}

    def _connect(self) -> Any:
        try:
            con = super()._connect()  # type: ignore[misc]
            cipher.probe(con, str(self.database), None)
        except cipher.DATABASE_ERRORS as exc:  # journal_mode or the probe read page 1
            if cipher.is_not_a_database(exc):
                raise cipher.wrong_key(str(self.database), None) from None
            raise
        return con


_cipher_class: type[peewee.SqliteDatabase] | None = None


def _cipher_database_class() -> type[peewee.SqliteDatabase]:
    """``KairoSqliteDatabase`` over Peewee's ``playhouse.sqlcipher_ext.SqlCipherDatabase``,
    keyed with a raw key (``cipher.apply_key``) and probed before its pragmas run (built on
    first use: ``playhouse.sqlcipher_ext`` imports SQLCipher)."""
    global _cipher_class
    if _cipher_class is None:
        cipher.driver()
        from playhouse.sqlcipher_ext import SqlCipherDatabase

        class KairoCipherDatabase(SqlCipherDatabase, KairoSqliteDatabase):
            def _connect(self) -> Any:
                params = dict(self.connect_params)
                key: DatabaseKey = params.pop("key")
                con = cipher.driver().connect(self.database, timeout=self._timeout,
                                              isolation_level=None, **params)
                try:
                    cipher.apply_key(con, key, str(self.database))
                    self._add_conn_hooks(con)
                except BaseException:
                    con.close()
                    raise
                return con

        _cipher_class = KairoCipherDatabase
    return _cipher_class


def sqlite_database(path: str, *, key: DatabaseKey | None, **kwargs: Any) -> peewee.SqliteDatabase:
    """The Peewee database of an SQLite file: plain, or SQLCipher keyed with ``key``. Every
    Peewee connection to a file (the writer's, readers', commands') is made here."""
    if key is None:
        return KairoSqliteDatabase(path, **kwargs)
    return _cipher_database_class()(path, key=key, **kwargs)


def is_sqlite(config: DatabaseConfig) -> bool:
    """Whether ``config.url`` names an SQLite file (the file-level commands need one)."""
    return dialects.dialect_for(config.url).files


def sqlite_path(url: str) -> Path:
    """``sqlite:///data/kairo.db`` -> ``data/kairo.db``; ``sqlite:////var/x.db`` -> ``/var/x.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise StorageError(
            f"unsupported database url {masked_url(url)!r}: use sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DATABASE"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise StorageError(f"database url {url!r} names no file: use sqlite:///PATH")
    return Path(path)


def pragmas(config: DatabaseConfig) -> list[tuple[str, object]]:
    """The pragmas every connection gets (the writer's and every reader's)."""
    return [
        ("journal_mode", "wal"),
        ("synchronous", config.effective_synchronous),
        ("busy_timeout", config.busy_timeout_ms),
        ("cache_size", -config.cache_size_kib),
        ("temp_store", "memory"),
        ("foreign_keys", 1),
        ("journal_size_limit", config.journal_size_limit),
    ]


def open_database(config: DatabaseConfig, *, create: bool = True) -> peewee.Database:
    """Open (creating if asked) the database of ``config.url`` and bind the models to it: an
    SQLite file, or a PostgreSQL database (``storage.postgres``; it must exist)."""
    if not is_sqlite(config):
        from sidecar.storage.postgres import open_postgres

        return open_postgres(config)
    path = sqlite_path(config.url)
    key = cipher.database_key(config)
    check_is_sqlite(path, key)
    if not path.exists():
        if not create:
            raise StorageError(f"database {path} does not exist", path=str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create directory {path.parent}: {exc.strerror}",
                               path=str(path)) from None
    # auto_vacuum first, and only on a new file: it takes before journal_mode writes the header
    # (an existing file is converted once by maintenance.ensure_incremental_vacuum). Setting it
    # on an existing file would rewrite page 1, and opening must not write.
    new_file = not path.exists() or path.stat().st_size == 0
    db = sqlite_database(
        str(path),
        key=key,
        pragmas=[("auto_vacuum", "incremental"), *pragmas(config)] if new_file else pragmas(config),
        timeout=config.busy_timeout_ms / 1000,
        check_same_thread=False,
    )
    try:
        db.connect(reuse_if_open=True)
    except cipher.ANY_DATABASE_ERRORS as exc:
        raise StorageError(f"cannot open database {path}: {exc}", path=str(path)) from None
    models.database_proxy.initialize(db)
    return db


def check_is_sqlite(path: Path, key: DatabaseKey | None = None) -> None:
    """Refuse, without touching it, a file that exists but is not an SQLite database, or does
    not fit ``key``: encrypted without one, plain with one (``cipher.check_header``)."""
    cipher.check_header(path, key)


def _router(db: peewee.Database) -> Router:
    return Router(db, migrate_dir=MIGRATIONS_DIR)


def migration_state(db: peewee.Database) -> tuple[list[str], list[str]]:
    """``(applied, pending)`` migration names, read only (a database never migrated has no
    history table, and this does not create it)."""
    router = _router(db)
    applied: list[str] = []
    if router.migrate_table in db.get_tables():
        applied = [name for (name,) in db.execute_sql(
            f'SELECT name FROM "{router.migrate_table}" ORDER BY id').fetchall()]
    return applied, [name for name in router.todo if name not in applied]


def check_schema(db: peewee.Database) -> list[str]:
    """Return the pending migrations; raise if the database is newer than this code."""
    router = _router(db)
    known = set(router.todo)
    unknown = [name for name in router.done if name not in known]
    if unknown:
        raise SchemaTooNewError(path=getattr(db, "database", None), unknown=unknown)
    return router.diff


def migrate(db: peewee.Database) -> list[str]:
    """Apply every pending migration; return their names. On PostgreSQL several sidecars may
    start at once: the first takes a session advisory lock (``MIGRATION_LOCK``) and migrates,
    the others wait for it, then find nothing pending."""
    if dialects.of(db).files:
        return _migrate(db)
    db.execute_sql("SELECT pg_advisory_lock(%s)", (dialects.MIGRATION_LOCK,))
    try:
        return _migrate(db)
    finally:
        db.execute_sql("SELECT pg_advisory_unlock(%s)", (dialects.MIGRATION_LOCK,))


def _migrate(db: peewee.Database) -> list[str]:
    pending = check_schema(db)
    if not pending:
        return []
    # Rebuilding a table or building an index sorts every row: with the connection's
    # temp_store=MEMORY the sort of a 1,000,000-event table peaked at 584 MB RSS (a Pi may have
    # 512 MB). In temporary files (SQLite's, next to nothing in memory) it stays small.
    files = dialects.of(db).files
    if files:
        db.execute_sql("PRAGMA temp_store = FILE")
    try:
        applied = _router(db).run()
    except peewee.DatabaseError as exc:
        raise StorageError(f"migration failed: {exc}", path=getattr(db, "database", None)) from exc
    finally:
        if files:
            db.execute_sql("PRAGMA temp_store = MEMORY")
    log.info("migrations_applied", migrations=applied)
    return applied
