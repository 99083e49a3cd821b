"""Retention: which events go, and deleting them in small steps.

A ``Policy`` comes from ``[retention]``. Planning is pure (``Policy.max_age_for``,
``age_groups``); a ``PurgeRun`` deletes in batches of ``batch_size`` rows, one batch per
``step()``, so the writer thread runs a step between two write batches and ingest is never held up
for long (Home Assistant's recorder re-queues its purge task the same way). The phases:

1. age: per event type the first matching rule's ``max_age`` (else ``max_age``), by
   ``created_at``, through the ``(created_at, type)`` index; dead letters by ``max_age``;
2. count: the oldest events (by ``seq``) beyond ``max_events``;
3. size: the oldest events while the used pages exceed ``max_db_bytes``;
4. vacuum: freed pages go back to the file system (``PRAGMA incremental_vacuum``).

Types whose rule says ``"forever"`` are never deleted, not even by the count and size caps. A
rule's ``keep_latest`` path keeps the newest event (largest ``seq``) per value of that path among
the types the rule governs, through every phase and the disk guard: the seqs to keep are read
once when a run starts (``keep_latest``) into a temporary table on the purging connection.
Matching is shell-style (``fnmatchcase``: ``*``, ``?``, ``[abc]``), case-sensitive, in Python, so
the same rule means the same thing everywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import peewee

from sidecar.config import RetentionConfig
from sidecar.core import paths
from sidecar.core.units import format_duration
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects

log = get_logger("sidecar.purge")

_IN_CHUNK = 500  # types per IN (...) list
VACUUM_PAGES = 2048  # pages returned to the file system per step (8 MiB at 4 KiB pages)


@dataclass(frozen=True)
class Policy:
    """What ``[retention]`` keeps; every limit 0 means none."""

    max_age: float = 0.0
    rules: tuple[tuple[str, float], ...] = ()
    max_events: int = 0
    max_db_bytes: int = 0
    batch_size: int = 2000
    latest_keys: tuple[str | None, ...] = ()  # each rule's keep_latest path, as ``rules``

    @classmethod
    def from_config(cls, config: RetentionConfig) -> Policy:
        return cls(max_age=config.max_age, rules=tuple((r.type, r.max_age) for r in config.rules),
                   max_events=config.max_events, max_db_bytes=config.max_db_bytes,
                   batch_size=config.batch_size,
                   latest_keys=tuple(r.keep_latest for r in config.rules))

    def keep_latest_for(self, event_type: str) -> str | None:
        """The path whose newest event per value is kept for ``event_type`` (its first
        matching rule's ``keep_latest``), or None."""
        for i, (pattern, _) in enumerate(self.rules):
            if fnmatchcase(event_type, pattern):
                return self.latest_keys[i] if i < len(self.latest_keys) else None
        return None

    @property
    def active(self) -> bool:
        """True if anything could ever be deleted."""
        return bool(self.max_age or self.max_events or self.max_db_bytes
                    or any(age for _, age in self.rules))

    def rule_for(self, event_type: str) -> tuple[str, float] | None:
        for pattern, age in self.rules:
            if fnmatchcase(event_type, pattern):
                return pattern, age
        return None

    def max_age_for(self, event_type: str) -> float:
        """Seconds an event of ``event_type`` is kept (0: no age limit)."""
        rule = self.rule_for(event_type)
        return self.max_age if rule is None else rule[1]

    def protected(self, event_type: str) -> bool:
        """A type a rule keeps forever: not even the count and size caps delete it."""
        rule = self.rule_for(event_type)
        return rule is not None and rule[1] == 0


def age_groups(policy: Policy, types: Iterable[str], now_ms: int) -> list[tuple[int, list[str]]]:
    """``[(cutoff_ms, types)]``: events of ``types`` created before ``cutoff_ms`` are too old."""
    groups: dict[int, list[str]] = {}
    for event_type in types:
        age = policy.max_age_for(event_type)
        if age > 0:
            groups.setdefault(now_ms - int(age * 1000), []).append(event_type)
    return sorted(groups.items())


def distinct_types(db: peewee.Database) -> list[str]:
    """Every stored event type, sorted (``event_types``: a type whose events are all gone may
    still be listed; purging it finds nothing)."""
    return [row[0] for row in _run(db, "SELECT type FROM event_types ORDER BY type")]


def kept_select(policy: Policy, types: Sequence[str], dialect: dialects.Dialect = dialects.SQLITE
                ) -> tuple[str, tuple[str, ...]] | None:
    """The SELECT of the seq of the newest event per key of every ``keep_latest`` rule (per
    path, among the types whose first matching rule names it) and its parameters; None when no
    rule keeps any."""
    groups: dict[str, list[str]] = {}
    for event_type in types:
        key = policy.keep_latest_for(event_type)
        if key is not None:
            groups.setdefault(key, []).append(event_type)
    selects: list[str] = []
    params: list[str] = []
    for key, group in sorted(groups.items()):
        path = paths.parse(key)
        expr = dialect.path_sql(path.column, path)
        for chunk in _chunks(group):
            selects.append(f"SELECT max(seq) FROM events WHERE type IN ({_marks(len(chunk))}) "
                           f"AND {dialect.present_sql(expr)} GROUP BY {expr}")
            params.extend(chunk)
    return (" UNION ALL ".join(selects), tuple(params)) if selects else None


def keep_latest(db: peewee.Database, policy: Policy, types: Sequence[str], *, table: str) -> str:
    """Fill the temporary ``table`` with the seqs ``kept_select`` names (read once, at the
    start of a run) and return the SQL term that spares them (``""`` when no rule keeps any)."""
    dialect = dialects.of(db)
    kept = kept_select(policy, types, dialect)
    if kept is None:
        return ""
    started = time.monotonic()
    db.execute_sql(f"CREATE TEMP TABLE IF NOT EXISTS {table} (seq BIGINT PRIMARY KEY)")
    if dialect.files:
        temp = f"temp.{table}"
        db.execute_sql(f"DELETE FROM {temp}")
        db.execute_sql(f"INSERT OR IGNORE INTO {temp} {kept[0]}", kept[1])
    else:  # PostgreSQL: the session's temporary schema; a seq kept by two rules is kept once
        temp = f"pg_temp.{table}"
        db.execute_sql(f"DELETE FROM {temp}")
        _run(db, f"INSERT INTO {temp} {kept[0]} ON CONFLICT DO NOTHING", kept[1])
    (count,) = db.execute_sql(f"SELECT count(*) FROM {temp}").fetchone()
    log.info("retention_keep_latest", kept=count, ms=round((time.monotonic() - started) * 1000, 1))
    return f" AND seq NOT IN (SELECT seq FROM {temp})"


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _run(db: peewee.Database, sql: str, params: Sequence[Any] = ()) -> Any:
    """``db.execute_sql`` with our ``?`` placeholders in the database's own style (``%s`` on
    PostgreSQL; none of these statements holds a literal ``?`` or ``%``)."""
    return db.execute_sql(sql if db.param == "?" else sql.replace("?", db.param), params)


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass
class PurgeResult:
    by_age: int = 0
    by_count: int = 0
    by_size: int = 0
    dead_letters: int = 0
    pages_freed: int = 0
    steps: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.by_age + self.by_count + self.by_size


@dataclass
class PlanLine:
    reason: str
    rows: int
    oldest_ms: int | None = None
    newest_ms: int | None = None


@dataclass
class PurgeRun:
    """One purge, done a batch at a time: call ``step()`` until it returns False."""

    db: peewee.Database
    policy: Policy
    now_ms: int
    result: PurgeResult = field(default_factory=PurgeResult)
    _phases: Iterator[None] | None = None
    _started: float = field(default_factory=time.monotonic)
    _spare: str = ""  # the keep_latest term every delete carries

    def step(self) -> bool:
        """Do one small piece of work (at most ``batch_size`` rows); False when finished."""
        if self._phases is None:
            self._phases = self._work()
        self.result.steps += 1
        try:
            next(self._phases)
        except StopIteration:
            self.result.seconds = round(time.monotonic() - self._started, 3)
            return False
        return True

    def run(self) -> PurgeResult:
        while self.step():
            pass
        return self.result

    # Each ``yield`` ends a step; the database is consistent (committed) at every yield.
    def _work(self) -> Iterator[None]:
        policy, batch = self.policy, self.policy.batch_size
        types = distinct_types(self.db)
        self._spare = keep_latest(self.db, policy, types, table="kairo_purge_keep")
        yield
        for cutoff, group in age_groups(policy, types, self.now_ms):
            for chunk in _chunks(group):
                while True:
                    n = self._delete(
                        f"SELECT seq FROM events WHERE type IN ({_marks(len(chunk))}) "
                        f"AND created_at < ?{self._spare} LIMIT ?", (*chunk, cutoff, batch))
                    self.result.by_age += n
                    yield
                    if n < batch:
                        break
        if policy.max_age > 0:
            cutoff = self.now_ms - int(policy.max_age * 1000)
            while True:
                with self.db.atomic("IMMEDIATE"):
                    n = _run(self.db,
                        "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
                        "WHERE received_at < ? ORDER BY id LIMIT ?)", (cutoff, batch)).rowcount
                self.result.dead_letters += n
                yield
                if n < batch:
                    break
        protected = [t for t in types if policy.protected(t)]
        if policy.max_events:
            total = _run(self.db, "SELECT count(*) FROM events").fetchone()[0]
            excess = total - policy.max_events
            for n in self._delete_oldest(excess, protected):
                self.result.by_count += n
                yield
        if policy.max_db_bytes:
            rows = _run(self.db, "SELECT count(*) FROM events").fetchone()[0]
            per_row = max(1.0, used_bytes(self.db) / max(1, rows))
            cursor = 0
            while True:
                excess = used_bytes(self.db) - policy.max_db_bytes
                if excess <= 0:
                    break
                want = max(1, min(batch, math.ceil(excess / per_row)))
                n, cursor = self._delete_oldest_batch(want, protected, cursor)
                self.result.by_size += n
                yield
                if n == 0:
                    log.warning("purge_size_unreachable", max_db_bytes=policy.max_db_bytes,
                                used_bytes=used_bytes(self.db),
                                hint="what is left is kept forever by a rule, or is not events")
                    break
        if self.result.events or self.result.dead_letters:
            yield from self._vacuum()

    def _delete(self, select_sql: str, params: Sequence[Any]) -> int:
        with self.db.atomic("IMMEDIATE"):
            cursor = _run(self.db, f"DELETE FROM events WHERE seq IN ({select_sql})", params)
            return max(cursor.rowcount, 0)

    def _delete_oldest(self, count: int, protected: Sequence[str]) -> Iterator[int]:
        cursor = 0
        while count > 0:
            n, cursor = self._delete_oldest_batch(min(count, self.policy.batch_size), protected,
                                                  cursor)
            if n == 0:
                return
            count -= n
            yield n

    def _delete_oldest_batch(self, limit: int, protected: Sequence[str],
                             after: int) -> tuple[int, int]:
        """Delete the ``limit`` oldest unprotected events after seq ``after``; return how many
        and the last seq looked at (protected rows are skipped, not scanned again)."""
        where, params = "seq > ?", [after, *protected]
        if protected:
            where += f" AND type NOT IN ({_marks(len(protected))})"
        where += self._spare
        with self.db.atomic("IMMEDIATE"):
            last = _run(self.db,
                f"SELECT max(seq) FROM (SELECT seq FROM events WHERE {where} ORDER BY seq "
                "LIMIT ?) AS oldest",
                (*params, limit)).fetchone()[0]
            if last is None:
                return 0, after
            n = _run(self.db, f"DELETE FROM events WHERE {where} AND seq <= ?",
                                    (*params, last)).rowcount
        return max(n, 0), last

    def _vacuum(self) -> Iterator[None]:
        if not dialects.of(self.db).files:
            return  # PostgreSQL's autovacuum reuses the space
        if _run(self.db, "PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        while True:
            free = _run(self.db, "PRAGMA freelist_count").fetchone()[0]
            if not free:
                return
            incremental_vacuum(self.db, VACUUM_PAGES)
            left = _run(self.db, "PRAGMA freelist_count").fetchone()[0]
            self.result.pages_freed += free - left
            yield
            if left >= free:
                return


def incremental_vacuum(db: peewee.Database, pages: int) -> None:
    """``PRAGMA incremental_vacuum(pages)``, run to its end. The pragma returns one empty row per
    page it frees, and Python's ``sqlite3`` steps a statement without result columns only once:
    through ``execute`` it would free a single page. ``executescript`` steps it until done."""
    db.connection().executescript(f"PRAGMA incremental_vacuum({int(pages)})")


def used_bytes(db: peewee.Database) -> int:
    """Bytes of the database file in use (its pages minus the free list); on PostgreSQL the
    database's size on the server."""
    if not dialects.of(db).files:
        return int(_run(db, "SELECT pg_database_size(current_database())").fetchone()[0])
    page_size = _run(db, "PRAGMA page_size").fetchone()[0]
    pages = _run(db, "PRAGMA page_count").fetchone()[0]
    free = _run(db, "PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def plan(db: peewee.Database, policy: Policy, now_ms: int) -> list[PlanLine]:
    """What a purge would delete now, without deleting (``purge --dry-run``). The size line is
    an estimate: how many of the oldest events hold the bytes over the limit."""
    lines: list[PlanLine] = []
    types = distinct_types(db)
    kept = kept_select(policy, types, dialects.of(db))  # inline: a dry run reads only
    spare, spare_params = (f" AND seq NOT IN ({kept[0]})", kept[1]) if kept else ("", ())
    for cutoff, group in age_groups(policy, types, now_ms):
        rows, oldest, newest = 0, None, None
        for chunk in _chunks(group):
            n, lo, hi = _run(db,
                f"SELECT count(*), min(created_at), max(created_at) FROM events "
                f"WHERE type IN ({_marks(len(chunk))}) AND created_at < ?{spare}",
                (*chunk, cutoff, *spare_params)).fetchone()
            rows += n
            oldest = lo if oldest is None or (lo is not None and lo < oldest) else oldest
            newest = hi if newest is None or (hi is not None and hi > newest) else newest
        age = format_duration((now_ms - cutoff) / 1000)
        shown = ", ".join(group[:5]) + (f" (+{len(group) - 5} more types)" if len(group) > 5 else "")
        lines.append(PlanLine(f"older than {age}: {shown}", rows, oldest, newest))
    if policy.max_age > 0:
        cutoff = now_ms - int(policy.max_age * 1000)
        n = _run(db, "SELECT count(*) FROM dead_letters WHERE received_at < ?",
                           (cutoff,)).fetchone()[0]
        lines.append(PlanLine(f"dead letters older than {format_duration(policy.max_age)}", n))
    aged = sum(line.rows for line in lines if line.reason.startswith("older"))
    total = _run(db, "SELECT count(*) FROM events").fetchone()[0]
    left = total - aged
    if policy.max_events:
        excess = max(0, left - policy.max_events)
        lines.append(PlanLine(f"beyond max_events = {policy.max_events}", excess))
        left -= excess
    if policy.max_db_bytes:
        used = used_bytes(db)
        per_row = used / total if total else 1.0
        over = used - int(per_row * (total - left)) - policy.max_db_bytes
        estimate = max(0, math.ceil(over / per_row)) if over > 0 else 0
        lines.append(PlanLine(f"over max_db_bytes = {policy.max_db_bytes} (estimate)",
                              min(estimate, left)))
    return lines
