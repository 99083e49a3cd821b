"""Opening a PostgreSQL database (``[database] url = "postgresql://user@host:port/db"``).

The driver is psycopg2 (``pip install 'kairo-sidecar[postgres]'``). The password comes from the
URL, ``[database] password`` (``KAIRO_SIDECAR_DATABASE__PASSWORD``) or the systemd credential
``database-password`` (``config.load_config`` reads it); it is never logged: every message
names the URL with the password masked.

Connections keep ``payload``/``metadata`` (JSONB) as JSON text, as SQLite returns them, and a
reader's connections are read-only (``default_transaction_read_only``). Every COMMIT waits for
its WAL flush (``synchronous_commit = on``, checked at open): the writer acks after COMMIT.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import peewee

from sidecar.config import DatabaseConfig
from sidecar.errors import StorageError
from sidecar.logs import get_logger
from sidecar.storage.dialect import POSTGRES, masked_url

log = get_logger("sidecar.postgres")

# The [database] keys that tune SQLite's file and journal; on PostgreSQL the server owns these.
SQLITE_ONLY_KEYS = ("durability", "synchronous", "sync_interval", "busy_timeout_ms",
                    "cache_size_kib", "startup_check", "checkpoint_interval", "journal_size_limit")


def _keep_json_text(value: Any, cursor: Any) -> Any:
    return value


class KairoPostgresDatabase(peewee.PostgresqlDatabase):
    """Peewee's PostgreSQL database, carrying its dialect into every SQL context."""

    dialect = POSTGRES

    def get_context_options(self) -> dict[str, Any]:
        return {**super().get_context_options(), "dialect": self.dialect}

    def begin(self, isolation_level: Any = None) -> None:
        # ``atomic("IMMEDIATE")`` is SQLite's write lock; PostgreSQL's row locks need no mode.
        if isinstance(isolation_level, str) and isolation_level.upper() in (
                "IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            isolation_level = None
        super().begin(isolation_level)

    def _connect(self) -> Any:
        import psycopg2.extensions

        conn = super()._connect()  # type: ignore[misc]
        for oid_name, oids in (("KAIRO_JSONB", (3802,)), ("KAIRO_JSON", (114,))):
            psycopg2.extensions.register_type(
                psycopg2.extensions.new_type(oids, oid_name, _keep_json_text), conn)
        return conn


def connect_params(url: str, password: str | None) -> dict[str, Any]:
    """psycopg2's keyword arguments for ``url`` (the password from it, else ``password``)."""
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise StorageError(f"database url {masked_url(url)!r} names no database: use "
                           "postgresql://USER@HOST:PORT/DATABASE", path=masked_url(url))
    params: dict[str, Any] = {"dbname": database}
    if parts.hostname:
        params["host"] = parts.hostname
    if parts.port:
        params["port"] = parts.port
    if parts.username:
        params["user"] = unquote(parts.username)
    secret = unquote(parts.password) if parts.password is not None else password
    if secret:
        params["password"] = secret
    for key, value in _query(parts.query).items():
        params.setdefault(key, value)  # sslmode=require, connect_timeout=5, ...
    params.setdefault("connect_timeout", 10)
    params.setdefault("application_name", "kairo-sidecar")
    return params


def _query(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        out[unquote(key)] = unquote(value)
    return out


def open_postgres(config: DatabaseConfig, *, read_only: bool = False) -> KairoPostgresDatabase:
    """Connect to the database of ``config.url`` and bind the models to it (``read_only``: a
    reader, whose connections refuse writes and do not bind the models)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise StorageError(
            f"cannot open database {masked_url(config.url)}: the PostgreSQL driver is not "
            "installed (pip install 'kairo-sidecar[postgres]')", path=masked_url(config.url)) \
            from None
    params = connect_params(config.url, config.password)
    if read_only:
        params["options"] = "-c default_transaction_read_only=on"
    db = KairoPostgresDatabase(params.pop("dbname"), **params)
    try:
        db.connect(reuse_if_open=True)
    except peewee.DatabaseError as exc:
        raise StorageError(f"cannot open database {masked_url(config.url)}: "
                           f"{_reason(exc)}", path=masked_url(config.url)) from None
    if not read_only:
        _check_settings(db, config)
        import models

        models.database_proxy.initialize(db)
    return db


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in our words where we know the cause."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused (is PostgreSQL running and listening there?)"
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return ("authentication failed (set the password in the url, [database] password, "
                "KAIRO_SIDECAR_DATABASE__PASSWORD or the database-password credential)")
    if "does not exist" in lowered:
        return "the database or role does not exist (create it first: createdb)"
    if "could not translate host name" in lowered:
        return "host name not resolved"
    if "timeout expired" in lowered:
        return "timed out"
    return "the server refused the connection"


def _check_settings(db: KairoPostgresDatabase, config: DatabaseConfig) -> None:
    """Say once what does not apply, and warn when COMMIT would not wait for durability."""
    (sync,) = db.execute_sql("SHOW synchronous_commit").fetchone()
    if str(sync).lower() == "off":
        log.warning("postgres_commit_not_durable", synchronous_commit=sync,
                    hint="acked events can be lost in a server crash; set synchronous_commit = on")
    defaults = DatabaseConfig()
    changed = [k for k in SQLITE_ONLY_KEYS if getattr(config, k) != getattr(defaults, k)]
    log.info("database_opened", engine="postgresql", url=masked_url(config.url),
             synchronous_commit=sync, durability="commit")
    if changed:
        log.info("database_settings_not_applicable", engine="postgresql", keys=changed,
                 hint="these tune SQLite's file and journal; a PostgreSQL COMMIT is durable")
