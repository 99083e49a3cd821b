"""Expression indexes on JSON paths (``[indexes] paths``): made and dropped at start.

For each path the daemon keeps ``CREATE INDEX events_path_<name> ON events(json_extract(payload,
'$."a"'), seq) WHERE json_extract(payload, '$."a"') IS NOT NULL``: partial, so an event without
the path writes nothing to it (SD-card wear, README "Performance"), and ``(value, seq)`` so an
equality ``where`` reads its page in ``seq`` order without a sort and ``latest`` finds a key's
newest event by one seek. ``sync`` runs after the migrations (``app``, ``kairo-sidecar migrate``): an index
for a path no longer listed is dropped; names come from the path (``core.paths``), so the
same config finds the same indexes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import peewee

from sidecar.core import paths
from sidecar.logs import get_logger

log = get_logger("sidecar.indexes")

PROGRESS_EVERY = 10.0  # seconds between two progress lines while an index is built
_PROGRESS_OPS = 100_000  # SQLite VM steps between two looks at the clock


def existing(db: peewee.Database) -> set[str]:
    """The names of the path indexes in the file (none on PostgreSQL: SQLite only for now)."""
    if not isinstance(db, peewee.SqliteDatabase):
        return set()
    rows = db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE ?",
                          (paths.INDEX_PREFIX + "%",))
    return {name for (name,) in rows if name.startswith(paths.INDEX_PREFIX)}


def create_sql(path: paths.JsonPath) -> str:
    expr = path.sql
    return (f'CREATE INDEX IF NOT EXISTS "{path.index_name}" ON events({expr}, seq) '
            f"WHERE {expr} IS NOT NULL")


def sync(db: peewee.Database, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Make the path indexes those of ``keys``: create the missing, drop the unlisted.
    Returns ``(created, dropped)`` index names. Building one on a large table takes a while
    (about a second per 100,000 events here): it logs ``path_index_building`` with the
    elapsed time every ``PROGRESS_EVERY`` seconds and ``path_index_created`` with its duration."""
    if not isinstance(db, peewee.SqliteDatabase):
        return [], []  # SQLite expression indexes (config refuses paths on PostgreSQL)
    wanted = {p.index_name: p for p in map(paths.parse, keys)}
    have = existing(db)
    dropped = sorted(have - wanted.keys())
    for name in dropped:
        with db.atomic("IMMEDIATE"):
            db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
        log.info("path_index_dropped", index=name)
    created = []
    for name, path in wanted.items():
        if name in have:
            continue
        _build(db, path)
        created.append(name)
    return created, dropped


def _build(db: peewee.Database, path: paths.JsonPath) -> None:
    (rows,) = db.execute_sql("SELECT count(*) FROM events").fetchone()
    log.info("path_index_creating", path=path.key, index=path.index_name, events=rows)
    started = last = time.monotonic()

    def progress() -> int:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            log.info("path_index_building", path=path.key, index=path.index_name,
                     seconds=round(now - started, 1), events=rows)
        return 0  # 0: go on

    conn = db.connection()
    conn.set_progress_handler(progress, _PROGRESS_OPS)
    try:
        with db.atomic("IMMEDIATE"):
            db.execute_sql(create_sql(path))
    finally:
        conn.set_progress_handler(None, 0)
    (entries,) = db.execute_sql(
        f'SELECT count(*) FROM events INDEXED BY "{path.index_name}" '
        f"WHERE {path.sql} IS NOT NULL").fetchone()
    log.info("path_index_created", path=path.key, index=path.index_name, events=rows,
             entries=entries, ms=round((time.monotonic() - started) * 1000, 1))
