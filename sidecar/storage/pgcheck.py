"""What `kairo-sidecar check` reports for a PostgreSQL database: the schema's migrations and
row counts (the SQLite integrity check does not apply there)."""

from __future__ import annotations

from typing import NamedTuple

import peewee

from sidecar.config import DatabaseConfig
from sidecar.storage.db import migration_state
from sidecar.storage.dialect import masked_url
from sidecar.storage.postgres import open_postgres


class PostgresReport(NamedTuple):
    """What ``check`` says about a PostgreSQL database: its schema and row counts (SQLite's
    integrity check reads a file's pages; PostgreSQL checks its own, see README)."""

    url: str  # password masked
    migrations: list[str]
    pending: list[str]
    events: int
    seq_range: tuple[int | None, int | None]
    created_range: tuple[int | None, int | None]
    dead_letters: int
    database_bytes: int


def describe(config: DatabaseConfig) -> PostgresReport:
    """Schema and row counts of the PostgreSQL database of ``config`` (read-only)."""
    db = open_postgres(config, read_only=True)
    try:
        done, pending = migration_state(db)
        if "001_initial" not in done:
            return PostgresReport(masked_url(config.url), done, pending, 0, (None, None),
                                  (None, None), 0, _size(db))
        events, lo, hi, first, last = db.execute_sql(
            "SELECT count(*), min(seq), max(seq), min(created_at), max(created_at) "
            "FROM events").fetchone()
        (dead,) = db.execute_sql("SELECT count(*) FROM dead_letters").fetchone()
        return PostgresReport(masked_url(config.url), done, pending, int(events), (lo, hi),
                              (first, last), int(dead), _size(db))
    finally:
        db.close()


def _size(db: peewee.Database) -> int:
    return int(db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0])

