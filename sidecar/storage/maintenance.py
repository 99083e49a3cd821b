"""WAL checkpoints, file sizes, page reclaiming, and the scheduler the writer runs between batches.

``Maintenance`` is the writer's between-batches hook: each call does at most one short step (a
PASSIVE checkpoint, one batch of a purge, or, while no delivery waits, one step of the search
backfill), so ingest waits at most one step. Everything here
runs on the connection of the thread that calls it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import peewee

from sidecar.config import Config
from sidecar.core.events import now_ms
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects
from sidecar.storage import search
from sidecar.storage.diskguard import CHECK_INTERVAL, FLOOR_RECHECK, DiskGuard
from sidecar.storage.purge import Policy, PurgeResult, PurgeRun

log = get_logger("sidecar.maintenance")

CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")


class Checkpoint(NamedTuple):
    busy: bool  # True if it could not finish (a reader or writer was in the way)
    wal_frames: int  # frames in the WAL (-1 when not in WAL mode)
    checkpointed: int  # frames copied into the database file


def checkpoint(db: peewee.Database, mode: str = "PASSIVE") -> Checkpoint:
    """``PRAGMA wal_checkpoint(mode)``. TRUNCATE also empties the WAL file when it finishes."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"unknown checkpoint mode {mode!r}")
    busy, frames, done = db.execute_sql(f"PRAGMA wal_checkpoint({mode})").fetchone()
    return Checkpoint(bool(busy), int(frames), int(done))


def wal_path(db_path: str | Path) -> Path:
    return Path(f"{db_path}-wal")


def wal_size(db_path: str | Path) -> int:
    """Bytes of the WAL file next to ``db_path`` (0 if there is none)."""
    try:
        return os.stat(wal_path(db_path)).st_size
    except OSError:
        return 0


class RunsSQL(Protocol):
    """A Peewee database, or anything else with its ``execute_sql``."""

    def execute_sql(self, sql: str, params: Any = ...) -> Any: ...


class StorageInfo(NamedTuple):
    db_bytes: int  # the database file
    wal_bytes: int  # its -wal file
    page_size: int
    pages: int
    free_pages: int  # pages on the free list (returned by the next incremental vacuum)
    auto_vacuum: str  # none, full or incremental


def storage_info(db: RunsSQL, db_path: str | Path) -> StorageInfo:
    """File sizes and page counts of the open database (for ``check`` and ``stats``)."""
    def pragma(name: str) -> int:
        return int(db.execute_sql(f"PRAGMA {name}").fetchone()[0])

    try:
        db_bytes = os.stat(db_path).st_size
    except OSError:
        db_bytes = 0
    mode = {0: "none", 1: "full", 2: "incremental"}.get(pragma("auto_vacuum"), "unknown")
    return StorageInfo(db_bytes, wal_size(db_path), pragma("page_size"), pragma("page_count"),
                       pragma("freelist_count"), mode)


def truncate_wal(db: peewee.Database, *, when: str) -> Checkpoint | None:
    """A TRUNCATE checkpoint (at start-up and at a clean stop); logged, never raised."""
    path = getattr(db, "database", "")
    before = wal_size(path)
    try:
        result = checkpoint(db, "TRUNCATE")
    except (peewee.DatabaseError, sqlite3.Error) as exc:
        log.warning("wal_checkpoint_failed", mode="TRUNCATE", when=when, error=str(exc))
        return None
    log.info("wal_checkpoint", mode="TRUNCATE", when=when, busy=result.busy,
             frames=result.checkpointed, wal_bytes_before=before, wal_bytes=wal_size(path))
    return result


def ensure_incremental_vacuum(db: peewee.Database) -> bool:
    """Switch an existing database to ``auto_vacuum=INCREMENTAL`` (needs one VACUUM, done once;
    new databases get it from their first pragma). Returns True if it is incremental now."""
    if db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return True
    path = getattr(db, "database", "")
    size = os.stat(path).st_size if path and os.path.exists(path) else 0
    log.info("vacuum_converting", to="auto_vacuum=incremental", db_bytes=size,
             hint="one-time rewrite of the file so purged space can go back to the file system")
    started = time.monotonic()
    try:
        db.execute_sql("PRAGMA auto_vacuum = INCREMENTAL")
        # VACUUM copies the whole database into a temporary one: in memory (the connection's
        # temp_store) that is the file's size in RSS (458 MB at 1,000,000 events); on disk next
        # to nothing.
        db.execute_sql("PRAGMA temp_store = FILE")
        try:
            db.execute_sql("VACUUM")
        finally:
            db.execute_sql("PRAGMA temp_store = MEMORY")
    except (peewee.DatabaseError, sqlite3.Error) as exc:
        log.warning("vacuum_convert_failed", error=str(exc),
                    hint="needs free disk space about the size of the database; retried at "
                         "next start. Purged space is still reused, the file just does not shrink")
        return False
    truncate_wal(db, when="after_vacuum")
    log.info("vacuum_converted", seconds=round(time.monotonic() - started, 2))
    return True


def release_free_pages(db: peewee.Database) -> int:
    """Hand every free page back to the file system (``incremental_vacuum``), then truncate the
    WAL; returns the pages released. Run once after migrations: a rebuilt table (migration 004)
    leaves the old one's pages free, and a commit that allocates from a large free list dirties
    free-list pages too (``bench.wear``: ~28 % more bytes per event with 30 MB free)."""
    free = int(db.execute_sql("PRAGMA freelist_count").fetchone()[0])
    if not free:
        return 0
    started = time.monotonic()
    try:
        db.connection().executescript("PRAGMA incremental_vacuum")
    except (peewee.DatabaseError, sqlite3.Error) as exc:
        log.warning("free_pages_not_released", error=str(exc), pages=free,
                    hint="they are reused by new events; a purge releases them later")
        return 0
    truncate_wal(db, when="after_vacuum")
    log.info("free_pages_released", pages=free, seconds=round(time.monotonic() - started, 2))
    return free


class Maintenance:
    """The writer's between-batches hook: periodic PASSIVE checkpoints, the disk guard (first:
    it keeps ingest alive) and the retention purge.

    Each call runs one short step while deliveries wait (``pending() > 0``), so ingest waits for
    at most one step; with nothing waiting it keeps stepping for up to ``idle_budget`` seconds.
    ``request_purge()`` (any thread) asks for a purge at the next call.
    """

    def __init__(self, db: peewee.Database, config: Config, *,
                 pending: Callable[[], int] = lambda: 0, idle_budget: float = 0.2,
                 clock: Callable[[], float] = time.monotonic,
                 on_purged: Callable[[PurgeResult], None] | None = None) -> None:
        self._db = db
        self._pending = pending
        self._idle_budget = idle_budget
        self._checkpoint_every = config.database.checkpoint_interval
        self._purge_every = config.retention.interval
        self._policy = Policy.from_config(config.retention)
        self._clock = clock
        self._on_purged = on_purged
        now = clock()
        files = dialects.of(db).files  # PostgreSQL: no WAL file to checkpoint, no disk guard
        self._next_checkpoint = (now + self._checkpoint_every
                                 if self._checkpoint_every and files else None)
        # The first purge soon after start (a daemon restarted daily still purges), then every
        # interval.
        first = min(self._purge_every, 60.0)
        self._next_purge = (now + first if self._purge_every and self._policy.active else None)
        self._purge: PurgeRun | None = None
        self._purge_requested = False
        self.last_purge: PurgeResult | None = None
        path = getattr(db, "database", "")
        self.guard: DiskGuard | None = (
            DiskGuard.from_config(db, path, config.retention)
            if files and path and path != ":memory:" else None)
        self._next_guard_check = now  # the first check at the first call
        # existing events still to index for search (storage.search): a step per idle call
        self._search_batch = config.search.backfill_batch if config.search.enabled and files else 0

    def make_room(self) -> None:
        """The disk is full (the writer got SQLITE_FULL and is about to retry): run the guard
        to its end now, on the writer thread, between two attempts."""
        guard = self.guard
        if guard is None or guard.min_free.off:
            return
        try:
            if not guard.running:
                if not guard.check():
                    return
                guard.start()
            while guard.step():
                pass
        except (peewee.DatabaseError, sqlite3.Error, OSError) as exc:
            log.warning("disk_guard_failed", error=str(exc), hint="retried at the next check")
        self._next_guard_check = self._clock() + CHECK_INTERVAL

    def request_purge(self) -> None:
        self._purge_requested = True

    @property
    def purging(self) -> bool:
        return self._purge is not None

    @property
    def purge_progress(self) -> PurgeResult | None:
        """The running purge's figures so far, else the last finished purge's (None before the
        first); read by ``/metrics`` from another thread, without a lock (plain counters)."""
        run = self._purge
        return run.result if run is not None else self.last_purge

    def __call__(self) -> None:
        """One step of whatever is due; more while no delivery waits, within the idle budget."""
        started = self._clock()
        while self._step() and not self._pending():
            if self._clock() - started >= self._idle_budget:
                break

    def _step(self) -> bool:
        """Run one step; False if there was nothing to do."""
        now = self._clock()
        if self._guard_step(now):
            return True
        if self._purge is not None:
            self._purge_step(now)
            return True
        if self._next_checkpoint is not None and now >= self._next_checkpoint:
            self._next_checkpoint = now + self._checkpoint_every
            self._checkpoint()
            return True
        due = self._next_purge is not None and now >= self._next_purge
        if (due or self._purge_requested) and self._policy.active:
            self._purge_requested = False
            self._purge = PurgeRun(self._db, self._policy, now_ms())
            self._purge_step(now)
            return True
        if self._search_batch and not self._pending():
            return self._search_step()
        return False

    def _search_step(self) -> bool:
        """Index the next ``backfill_batch`` existing events for search; once none is left,
        no more steps. A database error is logged and the step retried at a later call."""
        try:
            done = search.backfill(self._db, limit=self._search_batch)
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            log.warning("search_backfill_failed", error=str(exc), hint="retried later")
            return False
        if not done:
            self._search_batch = 0
            return False
        log.debug("search_backfilled", events=done)
        return True

    def _guard_step(self, now: float) -> bool:
        """One step of the disk guard if it runs or its check is due and finds too little room;
        False if it had nothing to do."""
        guard = self.guard
        if guard is None or guard.min_free.off:
            return False
        if not guard.running:
            if now < self._next_guard_check:
                return False
            # at the floor nothing changes until events age past min_free_keep: check less often
            wait = FLOOR_RECHECK if guard.state.floor_reached else CHECK_INTERVAL
            self._next_guard_check = now + wait
            try:
                short = guard.check()
            except (peewee.DatabaseError, sqlite3.Error, OSError) as exc:
                log.warning("disk_guard_failed", error=str(exc), hint="retried at the next check")
                return False
            if not short:
                return False
            guard.start()
        if not guard.step():
            self._next_guard_check = now + CHECK_INTERVAL
        return True

    def _checkpoint(self) -> None:
        try:
            result = checkpoint(self._db, "PASSIVE")
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            log.warning("wal_checkpoint_failed", mode="PASSIVE", error=str(exc))
            return
        log.debug("wal_checkpoint", mode="PASSIVE", busy=result.busy, wal_frames=result.wal_frames,
                  checkpointed=result.checkpointed)

    def _purge_step(self, now: float) -> None:
        run = self._purge
        assert run is not None
        try:
            more = run.step()
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            log.warning("purge_step_failed", error=str(exc), hint="retried at the next interval")
            more = False
        if more:
            return
        self._purge = None
        self.last_purge = run.result
        if self._purge_every:
            self._next_purge = now + self._purge_every
        r = run.result
        emit = log.info if r.events or r.dead_letters else log.debug
        emit("purge_finished", deleted=r.events, by_age=r.by_age, by_count=r.by_count,
                 by_size=r.by_size, dead_letters=r.dead_letters, pages_freed=r.pages_freed,
                 steps=r.steps, seconds=r.seconds)
        if self._on_purged is not None:
            self._on_purged(r)
