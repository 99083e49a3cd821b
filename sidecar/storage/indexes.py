"""Expression indexes on JSON paths (``[indexes] paths``): made and dropped at start.

For each path the daemon keeps ``CREATE INDEX events_path_<name> ON events(json_extract(payload,
'$."a"'), seq) WHERE json_extract(payload, '$."a"') IS NOT NULL``: partial, so an event without
the path writes nothing to it (SD-card wear, README "Performance"), and ``(value, seq)`` so an
equality ``where`` reads its page in ``seq`` order without a sort and ``latest`` finds a key's
newest event by one seek. ``sync`` runs after the migrations (``app``, ``kairo-sidecar migrate``): an index
for a path no longer listed is dropped; names come from the path (``core.paths``), so the
same config finds the same indexes.

On PostgreSQL the same index is a B-tree on ``(payload #> '{"a"}'::text[])`` (JSONB), partial
as well; members of a group that start together take turns on the migration lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import peewee

from sidecar.core import paths
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects

log = get_logger("sidecar.indexes")

PROGRESS_EVERY = 10.0  # seconds between two progress lines while an index is built
_PROGRESS_OPS = 100_000  # SQLite VM steps between two looks at the clock


def existing(db: peewee.Database) -> set[str]:
    """The names of the path indexes in the database."""
    if dialects.of(db).files:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE ?"
    else:
        sql = ("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
               "AND tablename = 'events' AND indexname LIKE %s")
    rows = db.execute_sql(sql, (paths.INDEX_PREFIX + "%",))
    return {name for (name,) in rows if name.startswith(paths.INDEX_PREFIX)}


def create_sql(path: paths.JsonPath, dialect: dialects.Dialect = dialects.SQLITE) -> str:
    expr = dialect.path_sql(path.column, path)
    return (f'CREATE INDEX IF NOT EXISTS "{path.index_name}" ON events({expr}, seq) '
            f"WHERE {expr} IS NOT NULL")


def _turn(db: peewee.Database) -> None:
    """PostgreSQL: wait for the other members of a group (the migration lock, until COMMIT)."""
    if not dialects.of(db).files:
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (dialects.MIGRATION_LOCK,))


def sync(db: peewee.Database, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Make the path indexes those of ``keys``: create the missing, drop the unlisted.
    Returns ``(created, dropped)`` index names. Building one on a large table takes a while
    (about a second per 100,000 events here): it logs ``path_index_building`` with the
    elapsed time every ``PROGRESS_EVERY`` seconds and ``path_index_created`` with its duration."""
    wanted = {p.index_name: p for p in map(paths.parse, keys)}
    have = existing(db)
    dropped = sorted(have - wanted.keys())
    for name in dropped:
        with db.atomic("IMMEDIATE"):
            _turn(db)
            db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
        log.info("path_index_dropped", index=name)
    created = []
    for name, path in wanted.items():
        if name in have:
            continue
        if dialects.of(db).files:
            _build(db, path)
        else:
            _build_postgres(db, path)
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


def _build_postgres(db: peewee.Database, path: paths.JsonPath) -> None:
    """One ``CREATE INDEX`` (it blocks inserts while it builds: as long as SQLite's build)."""
    (rows,) = db.execute_sql("SELECT count(*) FROM events").fetchone()
    log.info("path_index_creating", path=path.key, index=path.index_name, events=rows)
    started = time.monotonic()
    expr = dialects.POSTGRES.path_sql(path.column, path)
    with db.atomic():
        _turn(db)
        db.execute_sql(create_sql(path, dialects.POSTGRES))
    (entries,) = db.execute_sql(f"SELECT count(*) FROM events WHERE {expr} IS NOT NULL").fetchone()
    log.info("path_index_created", path=path.key, index=path.index_name, events=rows,
             entries=entries, ms=round((time.monotonic() - started) * 1000, 1))
