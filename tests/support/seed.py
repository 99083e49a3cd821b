"""Helpers for the storage tests: a migrated database with known events, damage, checksums."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sidecar.config import DatabaseConfig
from sidecar.storage.db import migrate, open_database

DAY_MS = 86_400_000
COLUMNS = ("id", "topic", "type", "source", "payload", "metadata", "created_at", "received_at",
           "correlation_id", "causation_id", "trace_id")


def now_ms() -> int:
    return int(time.time() * 1000)


def event(i: int, *, type: str = "kairo.test.event", age_days: float = 0.0,
          correlation_id: str | None = None, prefix: str = "e") -> tuple[Any, ...]:
    """One ``events`` row (without seq). The payload holds a marker unique to the row."""
    created = now_ms() - int(age_days * DAY_MS)
    payload = json.dumps({"i": i, "marker": f"row-{prefix}-{i:07d}-end", "pad": "x" * 120})
    metadata = json.dumps({"correlationId": correlation_id} if correlation_id else {})
    return (f"{prefix}-{i:07d}", f"kairo/{type.replace('.', '/')}", type, "seed", payload, metadata,
            created, created, correlation_id, None, None)


def create_db(path: Path, rows: Iterable[tuple[Any, ...]] = ()) -> Path:
    """A migrated database at ``path`` holding ``rows``; closed, WAL folded in."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    insert_rows(db, rows)
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


def insert_rows(db: Any, rows: Iterable[tuple[Any, ...]]) -> None:
    sql = (f"INSERT INTO events ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
    with db.atomic():
        db.cursor().executemany(sql, list(rows))


def query(path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage_page_holding(path: Path, marker: bytes) -> int:
    """Overwrite the whole page that holds ``marker`` with garbage; return its number (0-based)."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    at = data.find(marker)
    assert at > 0, f"{marker!r} not in {path}"
    page = at // page_size
    assert page > 0, "never damage the header page in these tests"
    data[page * page_size:(page + 1) * page_size] = b"\xa5" * page_size
    path.write_bytes(bytes(data))
    return page
