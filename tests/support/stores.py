"""A migrated store on either engine, and rows written into it, for suites that run on both.

``Store`` is what the ``store_url``-based fixtures hand a test: its ``config`` (for
``open_reader``, ``open_store`` ...) and ``insert_events`` (plain INSERTs through a connection
of its own, as another process would write; the triggers keep ``event_keys``/``event_types``
in step on either engine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config import DatabaseConfig
from sidecar.storage.db import is_sqlite, sqlite_path
from sidecar.storage.startup import open_store

COLUMNS = ("id", "topic", "type", "source", "payload", "metadata", "created_at", "received_at",
           "correlation_id", "causation_id", "trace_id")


@dataclass(frozen=True)
class Store:
    """A migrated, empty store; ``engine`` is ``"sqlite"`` or ``"postgres"``."""

    engine: str
    config: DatabaseConfig

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        return sqlite_path(self.url) if is_sqlite(self.config) else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (``?`` placeholders on both engines)."""
        if is_sqlite(self.config):
            import sqlite3

            con = sqlite3.connect(sqlite_path(self.url), timeout=10)
            try:
                with con:
                    return con.execute(sql, params).fetchall()
            finally:
                con.close()
        import psycopg2

        con = psycopg2.connect(self.url)
        try:
            with con, con.cursor() as cur:
                cur.execute(sql.replace("?", "%s") if params else sql, tuple(params) or None)
                return cur.fetchall() if cur.description else []
        finally:
            con.close()

    def insert_events(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert events (a mapping per row: the ``COLUMNS`` it names, the rest NULL)."""
        if not rows:
            return
        sql = (f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES "
               f"({', '.join('?' * len(COLUMNS))})")
        values = [tuple(row.get(c) for c in COLUMNS) for row in rows]
        if is_sqlite(self.config):
            import sqlite3

            con = sqlite3.connect(sqlite_path(self.url), timeout=10)
            try:
                with con:
                    con.executemany(sql, values)
            finally:
                con.close()
            return
        import psycopg2
        from psycopg2.extras import execute_values

        con = psycopg2.connect(self.url)
        try:
            with con, con.cursor() as cur:  # many rows a statement: executemany is a round trip each
                execute_values(cur, f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES %s",
                               values, page_size=1000)
        finally:
            con.close()

    def count(self, table: str = "events") -> int:
        return int(self.execute(f'SELECT count(*) FROM "{table}"')[0][0])


# A database a test reads: an SQLite file, or the URL of a PostgreSQL database (what
# ``SidecarProcess.db`` gives), so the fault suites count and compare rows on either engine.
Target = Path | str


def target_rows(target: Target, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One read (``?`` placeholders) on ``target``, in a connection of its own."""
    if isinstance(target, str) and not target.startswith("sqlite:"):
        return Store("postgres", DatabaseConfig(url=target)).execute(sql, params)
    path = sqlite_path(target) if isinstance(target, str) else target
    import sqlite3

    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def target_count(target: Target, table: str = "events") -> int:
    """``count(*)`` of ``table``; 0 while there is no such table (or file) yet."""
    if isinstance(target, Path) and not target.exists():
        return 0
    try:
        return int(target_rows(target, f'SELECT count(*) FROM "{table}"')[0][0])
    except Exception as exc:  # not migrated yet: sqlite3.OperationalError, psycopg2's UndefinedTable
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return 0
        raise


def make_store(engine: str, url: str) -> Store:
    """Migrate the database at ``url`` (created if SQLite) and describe it."""
    config = DatabaseConfig(url=url)
    open_store(config, schema="migrate", shared=True).close()
    return Store(engine, config)
