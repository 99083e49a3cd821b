"""Disk guard: keep ``[retention] min_free`` of the file system that holds the database free.

Retention can be off, yet the card must never fill up: a full disk stops ingest and the broker's
queue overflows. So, between two write batches (like the purge), the guard measures the room
left and, while it is below ``min_free``, deletes the OLDEST events (by ``seq``) in small steps,
then hands the freed pages back to the file system (``PRAGMA incremental_vacuum``).

Room is the file system's free bytes PLUS the database's free pages: SQLite reuses a free page
before it grows the file, so a page freed by a delete is room for new events even while it is
still inside the file (before the vacuum, or for ever in a file that cannot vacuum
incrementally). Counting only the file system would make the guard delete on and on.

What it never deletes: events received within ``min_free_keep`` (the floor; the guard stops at
the oldest event that recent, so it cannot loop when something else fills the disk), and types a
retention rule keeps ``"forever"``. Every row it sees is committed, and therefore already acked
or about to be: nothing waiting in the writer's queue is touched. Each run that deletes logs
``disk_guard_purged`` (warning); reaching the floor while still short of room logs
``disk_guard_floor_reached`` (warning, once per episode).
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import peewee

from sidecar.config import RetentionConfig
from sidecar.core.events import now_ms
from sidecar.core.units import format_duration, format_free_space, format_size, parse_free_space
from sidecar.logs import get_logger
from sidecar.storage.purge import (
    VACUUM_PAGES,
    PlanLine,
    Policy,
    distinct_types,
    incremental_vacuum,
    keep_latest,
    used_bytes,
)
from sidecar.storage.sqlite_errors import describe

log = get_logger("sidecar.diskguard")

CHECK_INTERVAL = 5.0  # seconds between two measurements in the daemon
VACUUM_MIN_PAGES = 16  # the smallest chunk the guard's vacuum returns per step
FLOOR_RECHECK = 60.0  # ... while at the floor (only ageing events can make it delete again)


@dataclass(frozen=True)
class MinFree:
    """``[retention] min_free``: a share of the file system or a number of bytes (0: off)."""

    percent: float = 0.0
    size: int = 0

    @classmethod
    def parse(cls, value: object) -> MinFree:
        percent, size = parse_free_space(value)
        return cls(percent, size)

    @property
    def off(self) -> bool:
        return self.percent <= 0 and self.size <= 0

    def required(self, total: int) -> int:
        """Bytes that must stay free on a file system of ``total`` bytes."""
        if self.percent > 0:
            return math.ceil(total * self.percent / 100)
        return self.size

    def __str__(self) -> str:
        return format_free_space(self.percent, self.size)


class Space(NamedTuple):
    """One measurement of the room around the database."""

    total: int  # size of the file system
    fs_free: int  # bytes free on it for an unprivileged writer (the daemon's user)
    free_pages: int  # bytes in the file SQLite reuses or gives back: its free list, and the
    #                  tail a vacuum cut off that the next checkpoint truncates

    @property
    def available(self) -> int:
        return self.fs_free + self.free_pages


def measure(db: Any, path: str | Path) -> Space:
    """The file system's size and free bytes (``statvfs`` of the database's directory) and the
    bytes of the database's free pages."""
    st = os.statvfs(Path(path).parent)
    page_size = int(db.execute_sql("PRAGMA page_size").fetchone()[0])
    pages = int(db.execute_sql("PRAGMA page_count").fetchone()[0])
    free = int(db.execute_sql("PRAGMA freelist_count").fetchone()[0])
    tail = max(0, _file_size(path) - pages * page_size)
    return Space(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, free * page_size + tail)


def _file_size(path: str | Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def deficit(min_free: MinFree, space: Space) -> int:
    """Bytes missing to reach ``min_free`` (0 when there is room, or the guard is off)."""
    if min_free.off:
        return 0
    return max(0, min_free.required(space.total) - space.available)


@dataclass
class GuardState:
    """What the ``stats`` answer shows (written by the writer thread, read by API workers)."""

    min_free: str = "off"
    keep_s: float = 0.0
    required_bytes: int = 0
    total_bytes: int | None = None
    fs_free_bytes: int | None = None
    free_page_bytes: int | None = None
    checked_at: int | None = None  # epoch ms of the last measurement
    deleted: int = 0  # events the guard deleted since the start
    runs: int = 0  # guard runs that deleted something
    floor_reached: bool = False  # short of room, and nothing left it may delete
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        available = (None if self.fs_free_bytes is None or self.free_page_bytes is None
                     else self.fs_free_bytes + self.free_page_bytes)
        return {"min_free": self.min_free, "min_free_bytes": self.required_bytes,
                "keep_s": self.keep_s, "total_bytes": self.total_bytes,
                "free_bytes": self.fs_free_bytes, "free_page_bytes": self.free_page_bytes,
                "available_bytes": available, "checked_at": self.checked_at,
                "deleted": self.deleted, "runs": self.runs, "floor_reached": self.floor_reached,
                "last_error": self.last_error}


@dataclass
class GuardResult:
    deleted: int = 0
    pages_freed: int = 0
    steps: int = 0
    floor_reached: bool = False
    before: Space | None = None
    after: Space | None = None


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass
class DiskGuard:
    """Checks the room and, when short, deletes the oldest events one batch per ``step()``.

    ``check()`` measures (cheap: a ``statvfs`` and two pragmas) and says whether a run is needed;
    ``start()`` begins a run; ``step()`` does one small piece of it and returns False when done.
    """

    db: peewee.Database
    path: str | Path
    min_free: MinFree
    keep_s: float
    batch_size: int = 2000
    policy: Policy = field(default_factory=Policy)
    now_ms: Callable[[], int] = now_ms
    state: GuardState = field(default_factory=GuardState)
    _run: Iterator[None] | None = None
    _result: GuardResult | None = None
    _spare: str = ""  # the keep_latest term every delete carries

    @classmethod
    def from_config(cls, db: peewee.Database, path: str | Path,
                    config: RetentionConfig) -> DiskGuard:
        min_free = MinFree.parse(config.min_free)
        return cls(db, path, min_free, config.min_free_keep, config.batch_size,
                   Policy.from_config(config),
                   state=GuardState(min_free=str(min_free), keep_s=config.min_free_keep))

    @property
    def running(self) -> bool:
        return self._run is not None

    def check(self) -> bool:
        """Measure; True if the room is below ``min_free`` (a run would delete)."""
        if self.min_free.off:
            return False
        space = self._measure()
        short = deficit(self.min_free, space) > 0
        if not short and self.state.floor_reached:
            self.state.floor_reached = False
            log.info("disk_guard_recovered", available_bytes=space.available,
                     min_free=str(self.min_free), min_free_bytes=self.state.required_bytes)
        return short

    def start(self) -> None:
        self._result = GuardResult()
        self._run = self._work(self._result)

    def step(self) -> bool:
        """One short step of the run (at most ``batch_size`` rows); False when it is over."""
        if self._run is None:
            return False
        assert self._result is not None
        self._result.steps += 1
        try:
            next(self._run)
            return True
        except StopIteration:
            self._finish(self._result)
            return False
        except Exception as exc:
            self._run = None
            self.state.last_error = describe(exc)[0]
            log.warning("disk_guard_failed", error=self.state.last_error,
                        deleted=self._result.deleted,
                        hint="retried at the next check")
            return False

    def run(self) -> GuardResult:
        """A whole run now, if the room is short (the CLI's ``purge``)."""
        result = GuardResult()
        if self.check():
            self.start()
            assert self._result is not None
            result = self._result
            while self.step():
                pass
        return result

    # ------------------------------------------------------------------ internals
    def _measure(self) -> Space:
        space = measure(self.db, self.path)
        s = self.state
        s.required_bytes = self.min_free.required(space.total)
        s.total_bytes, s.fs_free_bytes, s.free_page_bytes = space
        s.checked_at = self.now_ms()
        return space

    def _protected(self) -> list[str]:
        if not self.policy.rules:
            return []
        return [t for t in distinct_types(self.db) if self.policy.protected(t)]

    # Each ``yield`` ends a step; the database is consistent (committed) at every yield.
    def _work(self, result: GuardResult) -> Iterator[None]:
        result.before = space = self._measure()
        protected = self._protected()
        self._spare = (keep_latest(self.db, self.policy, distinct_types(self.db),
                                   table="kairo_guard_keep")
                       if any(self.policy.latest_keys) else "")
        rows = self.db.execute_sql("SELECT count(*) FROM events").fetchone()[0]
        per_row = max(1.0, used_bytes(self.db) / max(1, rows))
        cursor = 0
        while (missing := deficit(self.min_free, space)) > 0:
            # a delete writes its pages to the WAL first: a batch must fit in what the disk and
            # the WAL file (reused after the checkpoint of the previous step) still hold
            write_room = space.fs_free + _file_size(f"{self.path}-wal")
            want = max(1, min(self.batch_size, math.ceil(missing / per_row),
                              int(write_room // (4 * per_row))))
            n, cursor, at_floor = self._delete_oldest(want, protected, cursor)
            result.deleted += n
            self.state.deleted += n
            if at_floor:
                result.floor_reached = True
                break
            self._checkpoint()
            yield
            space = self._measure()
        if result.deleted:
            yield from self._vacuum(result)
        result.after = self._measure()

    def _delete_oldest(self, limit: int, protected: Sequence[str],
                       after: int) -> tuple[int, int, bool]:
        """Delete up to ``limit`` of the oldest events after seq ``after``, stopping at the
        first one received within ``keep_s``. Returns how many, the last seq deleted, and
        whether the floor (or the end of the table) stopped it."""
        where, params = "seq > ?", [after, *protected]
        if protected:
            where += f" AND type NOT IN ({_marks(len(protected))})"
        where += self._spare
        cutoff = self.now_ms() - int(self.keep_s * 1000)
        with self.db.atomic("IMMEDIATE"):
            rows = self.db.execute_sql(
                f"SELECT seq, received_at FROM events WHERE {where} ORDER BY seq LIMIT ?",
                (*params, limit)).fetchall()
            old = 0
            while old < len(rows) and rows[old][1] < cutoff:
                old += 1
            if old == 0:
                return 0, after, True
            last = rows[old - 1][0]
            n = self.db.execute_sql(f"DELETE FROM events WHERE {where} AND seq <= ?",
                                    (*params, last)).rowcount
        return max(n, 0), last, old < len(rows)

    def _vacuum(self, result: GuardResult) -> Iterator[None]:
        """Give the free pages back in chunks the short disk can take: moving pages writes them
        to the WAL first, so a chunk is at most a quarter of the free bytes (the checkpoint after
        each step truncates the file, and the chunks grow). Should it fail all the same, the
        pages stay on the free list, where SQLite reuses them."""
        if self.db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return  # the free pages stay in the file, and are reused: still room
        page_size = self.db.execute_sql("PRAGMA page_size").fetchone()[0]
        while True:
            free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
            if not free:
                return
            room = os.statvfs(Path(self.path).parent)
            chunk = max(VACUUM_MIN_PAGES, min(VACUUM_PAGES,
                                              room.f_bavail * room.f_frsize // page_size // 4))
            try:
                incremental_vacuum(self.db, chunk)
            except (peewee.DatabaseError, sqlite3.Error) as exc:
                log.warning("disk_guard_vacuum_failed", error=describe(exc)[0], free_pages=free,
                            hint="the pages stay free inside the file and are reused")
                return
            left = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
            result.pages_freed += free - left
            self._checkpoint()
            yield
            if left >= free:
                return

    def _checkpoint(self) -> None:
        """A PASSIVE checkpoint after each step: the WAL starts again from its beginning instead
        of growing on a disk that is short of room, and the vacuumed tail leaves the file."""
        self.db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _finish(self, result: GuardResult) -> None:
        self._run = None
        after = result.after
        s = self.state
        s.last_error = None
        if result.deleted:
            s.runs += 1
            log.warning("disk_guard_purged", deleted=result.deleted, deleted_total=s.deleted,
                        pages_freed=result.pages_freed, steps=result.steps,
                        free_bytes=after.fs_free if after else None,
                        free_page_bytes=after.free_pages if after else None,
                        available_before=result.before.available if result.before else None,
                        available_bytes=after.available if after else None,
                        min_free=str(self.min_free), min_free_bytes=s.required_bytes,
                        floor_reached=result.floor_reached)
        if result.floor_reached and not s.floor_reached:
            log.warning("disk_guard_floor_reached", available_bytes=after.available if after else None,
                        min_free=str(self.min_free), min_free_bytes=s.required_bytes,
                        keep=format_duration(self.keep_s),
                        hint="the events left (if any) are younger than min_free_keep or kept "
                             "forever by a rule: free space on the file system, or give it more")
        s.floor_reached = result.floor_reached and after is not None and deficit(
            self.min_free, after) > 0


def plan(db: Any, path: str | Path, config: RetentionConfig, now: int) -> PlanLine | None:
    """What the guard would delete now (``purge --dry-run``), or None when it is off. The count
    is an estimate: how many of the oldest events hold the bytes missing, up to the floor."""
    min_free = MinFree.parse(config.min_free)
    if min_free.off:
        return None
    space = measure(db, path)
    missing = deficit(min_free, space)
    required = min_free.required(space.total)
    reason = (f"disk guard: {format_size(space.available)} available, min_free = {min_free} "
              f"({format_size(required)})")
    if not missing:
        return PlanLine(reason, 0)
    policy = Policy.from_config(config)
    protected = [t for t in distinct_types(db) if policy.protected(t)] if policy.rules else []
    skip = f" AND type NOT IN ({_marks(len(protected))})" if protected else ""
    cutoff = now - int(config.min_free_keep * 1000)
    young = db.execute_sql(f"SELECT min(seq) FROM events WHERE received_at >= ?{skip}",
                           (cutoff, *protected)).fetchone()[0]
    bound = "" if young is None else " AND seq < ?"
    args = (*protected, *(() if young is None else (young,)))
    total = db.execute_sql("SELECT count(*) FROM events").fetchone()[0]
    per_row = max(1.0, used_bytes(db) / max(1, total))
    want = math.ceil(missing / per_row)
    rows = db.execute_sql(
        f"SELECT count(*), min(created_at), max(created_at) FROM (SELECT created_at FROM events "
        f"WHERE 1{skip}{bound} ORDER BY seq LIMIT ?)", (*args, want)).fetchone()
    floor = " (floor reached: the rest is newer than min_free_keep)" if rows[0] < want else ""
    return PlanLine(f"{reason}: {format_size(missing)} short (estimate){floor}", rows[0], rows[1],
                    rows[2])
