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

        con = psycopg2.connect(self.url)
        try:
            with con, con.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), values)
        finally:
            con.close()

    def count(self, table: str = "events") -> int:
        return int(self.execute(f'SELECT count(*) FROM "{table}"')[0][0])


def make_store(engine: str, url: str) -> Store:
    """Migrate the database at ``url`` (created if SQLite) and describe it."""
    config = DatabaseConfig(url=url)
    open_store(config, schema="migrate", shared=True).close()
    return Store(engine, config)
