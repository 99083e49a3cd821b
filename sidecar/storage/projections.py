"""Projections on the database: the fold the writer runs in its transaction, and the rebuild.

``Folder.fold`` takes the events a batch newly inserted (never a redelivery: those are not
inserted), in ``seq`` order, and writes the entries each matching rule renders through
``storage.kv.project`` (a version per change, the row marked with the event's ``seq``, no
``kairo.kv.put`` event). An event a rule cannot fold (a placeholder missing, a bad key, a value
too large, a payload that is no object for ``merge``) is skipped and counted; the caller logs
the skips once per batch.

``rebuild`` recomputes one rule's keys from the event log: it reads the matching events in
chunks without holding the write lock (``progress`` after each), folding them in memory up to
the newest ``seq`` at its start; then in one short write transaction it deletes every key under
the rule's prefix, writes the folded entries, and folds the events stored meanwhile (by the
daemon's writer beside it) from the log. So it is safe beside the running daemon, and the
state equals a fold of the whole log in ``seq`` order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec
import peewee

from models import Event
from sidecar.core.kv import KvEntry
from sidecar.core.projections import Projection, Skip
from sidecar.storage import dialect as dialects
from sidecar.storage import kv, queries

REBUILD_CHUNK = 2000  # events read per step of a rebuild


class Folded(NamedTuple):
    """What one event tells a projection: its ``seq``, type, source, payload (JSON text) and
    the time its entry gets (``received_at``: a rebuild gives the same ``updated_at``)."""

    seq: int
    type: str
    source: str
    payload: str
    at: int


class FoldResult(NamedTuple):
    """The entries written (in order) and the events skipped, per projection name."""

    written: list[KvEntry]
    skipped: dict[str, list[Skip]]


def _decode(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None


def _value(rule: Projection, event: Folded, payload: Any, current: KvEntry | None,
           max_bytes: int) -> str:
    """The value the event makes under ``rule``; ``ValueError`` to skip it."""
    value = rule.value_of(payload, event.payload, None if current is None else current.value)
    size = len(value.encode())
    if size > max_bytes:
        raise ValueError(f"value: {size} bytes of JSON, at most {max_bytes} ([kv] max_value_bytes)")
    return value


class Folder:
    """The configured rules, with a per-type cache of which rules match."""

    def __init__(self, rules: Sequence[Projection], *, max_value_bytes: int) -> None:
        self.rules = tuple(rules)
        self._max_bytes = max_value_bytes
        self._by_type: dict[str, tuple[Projection, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matching(self, event_type: str) -> tuple[Projection, ...]:
        found = self._by_type.get(event_type)
        if found is None:
            if len(self._by_type) > 10_000:
                self._by_type.clear()
            found = self._by_type[event_type] = tuple(r for r in self.rules if r.matches(event_type))
        return found

    def step(self, rule: Projection, event: Folded, payload: Any,
             read: Callable[[str], KvEntry | None]) -> tuple[str, str, KvEntry | None]:
        """``(key, new value, current entry)`` of ``event`` under ``rule``; ``ValueError`` to
        skip it."""
        if payload is None and event.payload.strip() != "null":
            raise ValueError("payload: not JSON")
        key = rule.key_of(event.type, event.source, payload)
        current = read(key)
        value = _value(rule, event, payload, current, self._max_bytes)
        return key, value, current

    def fold_into(self, state: _State, events: Sequence[Folded],
                  only: Projection | None = None) -> dict[str, list[Skip]]:
        """Fold ``events`` (in ``seq`` order) into ``state``; the skips per projection name."""
        skipped: dict[str, list[Skip]] = {}
        for event in events:
            rules = self.matching(event.type) if only is None else (
                (only,) if only.matches(event.type) else ())
            if not rules:
                continue
            payload = _decode(event.payload)
            for rule in rules:
                try:
                    key, value, current = self.step(rule, event, payload, state.read)
                except ValueError as exc:
                    skipped.setdefault(rule.name, []).append(Skip(event.seq, str(exc)))
                    continue
                state.change(key, value, current, event)
        return skipped

    def fold(self, db: peewee.Database, events: Sequence[Folded]) -> FoldResult:
        """Fold ``events`` (in ``seq`` order) in the caller's write transaction: in memory (each
        key read once), then each changed key written once, with the version it would have had
        after one put per change (so the result equals folding them one by one)."""
        state = _State(lambda key: kv.get_fast(db, key))
        skipped = self.fold_into(state, events)
        changed = state.changed()
        kv.write_projected(db, changed)
        return FoldResult([entry for entry, _ in changed], skipped)


class _State:
    """Entries being folded: read through ``load`` once per key, changed in memory."""

    def __init__(self, load: Callable[[str], KvEntry | None]) -> None:
        self._load = load
        self._entries: dict[str, KvEntry | None] = {}
        self._seqs: dict[str, int] = {}  # changed keys -> the seq of their last change

    def read(self, key: str) -> KvEntry | None:
        if key not in self._entries:
            self._entries[key] = self._load(key)
        return self._entries[key]

    def change(self, key: str, value: str, current: KvEntry | None, event: Folded) -> None:
        """As a put: nothing when ``value`` is the stored one, else one more version."""
        if current is not None and current.value == value:
            return
        self._entries[key] = KvEntry(key, value, 1 if current is None else current.version + 1,
                                     event.at)
        self._seqs[key] = event.seq

    def changed(self) -> list[tuple[KvEntry, int]]:
        """``(entry, seq of its last change)`` of every changed key, in the order first changed."""
        out = []
        for key, seq in self._seqs.items():
            entry = self._entries[key]
            assert entry is not None
            out.append((entry, seq))
        return out


# ------------------------------------------------------------------------------ rebuild
class _TypeFilter(msgspec.Struct, frozen=True, kw_only=True):
    """The ``Filter`` a rebuild reads with: the rule's type glob only."""

    type: str
    source: None = None
    topic: None = None
    since: None = None
    until: None = None
    correlation_id: None = None
    causation_id: None = None
    trace_id: None = None
    after: None = None
    where: None = None


class RebuildReport(NamedTuple):
    """A finished rebuild: events read, keys removed and written, events skipped."""

    events: int
    removed: int
    keys: int
    skipped: list[Skip]


def _read(db: peewee.Database, cond: queries.Conditions, *, after: int, upto: int,
          limit: int) -> list[Folded]:
    rows = db.execute(queries.page(cond, limit=limit, after=after,
                                   dialect=dialects.of(db))).fetchall()
    # StoredEvent order: seq, id, topic, type, source, payload, metadata, created_at, received_at
    return [Folded(r[0], r[3], r[4], r[5], r[8]) for r in rows if r[0] <= upto]


def _last_seq(db: peewee.Database) -> int:
    (seq,) = db.execute(Event.select(peewee.fn.COALESCE(peewee.fn.MAX(Event.seq), 0))
                        .tuples()).fetchone()
    return int(seq)


def rebuild(db: peewee.Database, folder: Folder, rule: Projection, *,
            chunk: int = REBUILD_CHUNK,
            progress: Callable[[int, int, int], None] | None = None) -> RebuildReport:
    """Recompute ``rule``'s keys from the event log (module docstring). ``progress(seq, top,
    events)`` after each chunk read."""
    cond = queries.conditions(_TypeFilter(type=rule.type_glob))
    top = _last_seq(db)
    state = _State(lambda key: None)  # the keys are rebuilt from nothing
    skipped: list[Skip] = []
    cursor = events = 0
    while cursor < top:
        found = db.execute(queries.page(cond, limit=chunk, after=cursor,
                                        dialect=dialects.of(db))).fetchall()
        batch = [Folded(r[0], r[3], r[4], r[5], r[8]) for r in found if r[0] <= top]
        skipped.extend(folder.fold_into(state, batch, only=rule).get(rule.name, []))
        events += len(batch)
        cursor = top if len(found) < chunk or len(batch) < len(found) else found[-1][0]
        if progress is not None:
            progress(cursor, top, events)
    with db.atomic("IMMEDIATE"):
        removed = kv.delete_prefix(db, rule.prefix)
        kv.write_projected(db, state.changed())
        after = top
        while True:  # what the daemon stored meanwhile, folded from the log under the lock
            late = _read(db, cond, after=after, upto=2**63 - 1, limit=chunk)
            if not late:
                break
            late_state = _State(lambda key: kv.get_fast(db, key))
            skipped.extend(folder.fold_into(late_state, late, only=rule).get(rule.name, []))
            kv.write_projected(db, late_state.changed())
            events += len(late)
            after = late[-1].seq
    return RebuildReport(events, removed, kv.count_prefix(db, rule.prefix), skipped)
