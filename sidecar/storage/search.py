"""Full-text search: the ``event_search`` FTS5 index kept in step with ``events``, and reads.

The design (migration 011): ``event_search`` has external content, the view
``event_search_content`` that computes each indexed event's text from ``events``, so the text
is stored once (in the event). Which events are indexed is ``event_search_state``: those with
``seq <= backfilled_to`` and those with ``seq >= live_from``; the view shows exactly those, so
FTS5's ``integrity-check`` holds at every commit.

* New events: the trigger ``events_search_insert`` indexes an event with ``seq >= live_from``
  in the statement that inserts it, in the writer's transaction (or an import's, or a
  dead-letter re-ingest's): an event is searchable exactly when it is queryable.
* Deletes (retention, ``keep_latest``, the disk guard, ``purge``): ``events_search_delete``
  removes the tokens of an indexed event in the deleting statement (FTS5's 'delete' with the
  text computed as at indexing: the same expression).
* Existing events: ``backfill`` indexes the next events above ``backfilled_to`` in ``seq``
  order and moves it, in the caller's transaction (resumable: the watermark is committed with
  the index). The daemon does a bounded step between write batches when nothing waits
  (``storage.maintenance``); ``kairo-sidecar search rebuild`` runs it to the end with a
  progress bar.

``sync`` (at start, before the writer) makes the triggers and the view for the ``[search]``
config. The text expressions are part of the schema, so what a config indexes is fixed by the
triggers; a config whose fields, paths or tokenizer differ from the indexed one empties the
index and indexes again (new events at once, existing ones by the backfill). Search off: no
trigger (no cost per event) and an empty index.

PostgreSQL (``storage.search_pg``): a GIN expression index over a ``tsvector`` of the same
text, made or dropped by the same ``sync``; no backfill, no triggers.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import peewee

from models import Event
from sidecar.config import SearchConfig
from sidecar.core import paths
from sidecar.core.search_query import Query
from sidecar.errors import ConfigError, FilterError, StorageError
from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects
from sidecar.storage import search_pg
from sidecar.storage.queries import Conditions

log = get_logger("sidecar.search")

TABLE = "event_search"
STATE = "event_search_state"
VIEW = "event_search_content"
OFF = 2**62  # live_from while search is off: no seq reaches it
TOKENIZERS = {"unicode61": "unicode61 remove_diacritics 2", "trigram": "trigram"}
SNIPPET_TOKENS = 12  # tokens around a match in a snippet
# FTS5 merge settings (migration 013; kept in the table): merge 16 segments a level at a time,
# incrementally, a whole level inside one commit only once 64 segments wait
MERGE = (("automerge", 16), ("crisismerge", 64))
_ALL_STRINGS = ("(SELECT group_concat(value, ' ') FROM json_tree({r}.{column}{path}) "
                "WHERE type = 'text')")


class SearchUnavailable(StorageError):
    """Full-text search cannot answer on this database: off in the file or the config
    (``code`` ``search_disabled``), or not on this engine (``search_unavailable``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class State(NamedTuple):
    """Which events are indexed: ``seq <= backfilled_to`` and ``seq >= live_from``."""

    backfilled_to: int
    live_from: int
    spec: str

    @property
    def enabled(self) -> bool:
        return self.live_from < OFF

    @property
    def complete(self) -> bool:
        return self.enabled and self.backfilled_to >= self.live_from - 1


class Spec(NamedTuple):
    """What the index holds per event, from ``[search]``: the SQL of each FTS5 column for the
    row ``r`` (``new``, ``old`` or the view's ``e``)."""

    fields: tuple[str, ...]
    paths: tuple[tuple[str, tuple[str, ...]], ...]  # (type glob, JSON paths), first match wins
    tokenizer: str  # the tokenize argument

    @classmethod
    def from_config(cls, config: SearchConfig) -> Spec:
        return cls(tuple(config.fields), tuple((p.type, tuple(p.paths)) for p in config.paths),
                   TOKENIZERS[config.tokenizer])

    @property
    def fingerprint(self) -> str:
        return json.dumps([list(self.fields), [[t, list(p)] for t, p in self.paths],
                           self.tokenizer])

    def columns(self, r: str) -> tuple[str, str, str]:
        """SQL for the ``type``, ``source`` and ``body`` columns of the row ``r``."""
        kind = f"{r}.type" if "type" in self.fields else "NULL"
        source = f"{r}.source" if "source" in self.fields else "NULL"
        if "payload" not in self.fields:
            return kind, source, "NULL"
        body = _ALL_STRINGS.format(r=r, column="payload", path="")
        if self.paths:
            arms = []
            for glob, keys in self.paths:
                parts = []
                for key in keys:
                    path = paths.parse(key)
                    parts.append(_ALL_STRINGS.format(r=r, column=path.column,
                                                     path=f", '{path.path}'"))
                arms.append(f"WHEN {r}.type GLOB {_literal(glob)} THEN "
                            + " || ' ' || ".join(f"coalesce({p}, '')" for p in parts))
            body = f"CASE {' '.join(arms)} ELSE {body} END"
        # a payload that is not JSON (never stored by the sidecar) indexes no text, rather
        # than failing the insert
        return kind, source, f"CASE WHEN json_valid({r}.payload) THEN {body} END"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def available(db: peewee.Database) -> bool:
    """Whether this is an SQLite file (FTS5); PostgreSQL answers through ``search_pg``."""
    return dialects.of(db).files


def tokenizer_available(db: peewee.Database, tokenizer: str) -> bool:
    """Whether this SQLite build has FTS5 with ``tokenizer`` (trigram: SQLite 3.34+)."""
    try:
        db.execute_sql(f"CREATE VIRTUAL TABLE temp.kairo_tokenizer_probe USING fts5(a, "
                       f"tokenize={_literal(TOKENIZERS[tokenizer])})")
    except (peewee.DatabaseError, sqlite3.Error):
        return False
    db.execute_sql("DROP TABLE temp.kairo_tokenizer_probe")
    return True


def state(cursor: Any) -> State:
    if not dialects.of_cursor(cursor).files:  # PostgreSQL: the GIN index, complete or off
        return _pg_state(search_pg.spec_of(cursor))
    row = cursor.execute(f"SELECT backfilled_to, live_from, spec FROM {STATE}").fetchone()
    return State(int(row[0]), int(row[1]), str(row[2]))


def _tokenizer_in_file(cursor: Any) -> str:
    return str(cursor.execute(f"SELECT tokenizer FROM {STATE}").fetchone()[0])


class Synced(NamedTuple):
    """What ``sync`` did: ``action`` is ``unchanged``, ``enabled``, ``reindex`` or ``disabled``."""

    action: str
    state: State


def sync(db: peewee.Database, config: SearchConfig, *, source: str = "config") -> Synced:
    """Make the index, its triggers and its view those of ``config``, in one transaction (the
    daemon at start, ``search rebuild``). A config that indexes differently from the file
    empties the index: new events are indexed from the next one, existing ones by the
    backfill. ``ConfigError`` naming ``search.tokenizer`` if this SQLite lacks the tokenizer."""
    if not available(db):
        action, spec_pg = search_pg.sync(db, config, source=source)
        return Synced(action, _pg_state(spec_pg))
    if config.enabled and not tokenizer_available(db, config.tokenizer):
        version = sqlite3.sqlite_version
        raise ConfigError(f"{config.tokenizer!r}: this SQLite ({version}) has no FTS5 "
                          f"{config.tokenizer} tokenizer (trigram needs 3.34 or later with FTS5)",
                          source=source, key="search.tokenizer")
    spec = Spec.from_config(config)
    with db.atomic("IMMEDIATE"):
        cursor = db.cursor()
        now = state(cursor)
        if not config.enabled:
            if not now.enabled:
                return Synced("unchanged", now)
            _drop_triggers(cursor)
            cursor.execute(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('delete-all')")
            cursor.execute(f"UPDATE {STATE} SET backfilled_to = 0, live_from = ?, spec = ''",
                           (OFF,))
            log.info("search_disabled", hint="the index was emptied; enabling indexes again")
            return Synced("disabled", state(cursor))
        if now.enabled and now.spec == spec.fingerprint:
            return Synced("unchanged", now)
        _drop_triggers(cursor)
        if _tokenizer_in_file(cursor) != spec.tokenizer:
            cursor.execute(f"DROP TABLE {TABLE}")
            _create_table(cursor, spec)
        else:
            cursor.execute(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('delete-all')")
        top = cursor.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        cursor.execute(f"UPDATE {STATE} SET backfilled_to = 0, live_from = ?, spec = ?",
                       (int(top) + 1, spec.fingerprint))
        _create_view(cursor, spec)
        _create_triggers(cursor, spec)
        action = "reindex" if now.enabled else "enabled"
        after = state(cursor)
    log.info("search_index_" + action, existing_events_upto=int(top), tokenizer=spec.tokenizer,
             fields=list(spec.fields), hint="existing events are indexed in the background; "
             "kairo-sidecar search-index rebuild does it now")
    return Synced(action, after)


def _drop_triggers(cursor: Any) -> None:
    cursor.execute("DROP TRIGGER IF EXISTS events_search_insert")
    cursor.execute("DROP TRIGGER IF EXISTS events_search_delete")


def _create_table(cursor: Any, spec: Spec) -> None:
    cursor.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5(type, source, body, "
                   f"content={_literal(VIEW)}, content_rowid='seq', "
                   f"tokenize={_literal(spec.tokenizer)})")
    for option, value in MERGE:  # as migration 013 set them on the table it replaces
        cursor.execute(f"INSERT INTO {TABLE} ({TABLE}, rank) VALUES (?, ?)", (option, value))
    cursor.execute(f"UPDATE {STATE} SET tokenizer = ?", (spec.tokenizer,))


def _create_view(cursor: Any, spec: Spec) -> None:
    kind, source, body = spec.columns("e")
    cursor.execute(f"DROP VIEW IF EXISTS {VIEW}")
    cursor.execute(f"CREATE VIEW {VIEW} AS SELECT e.seq AS seq, {kind} AS type, "
                   f"{source} AS source, {body} AS body FROM events e "
                   f"WHERE e.seq <= (SELECT backfilled_to FROM {STATE}) "
                   f"OR e.seq >= (SELECT live_from FROM {STATE})")


def _create_triggers(cursor: Any, spec: Spec) -> None:
    new = ", ".join(spec.columns("new"))
    old = ", ".join(spec.columns("old"))
    cursor.execute("CREATE TRIGGER events_search_insert AFTER INSERT ON events "
                   f"WHEN new.seq >= (SELECT live_from FROM {STATE}) BEGIN "
                   f"INSERT INTO {TABLE} (rowid, type, source, body) VALUES (new.seq, {new}); END")
    cursor.execute("CREATE TRIGGER events_search_delete AFTER DELETE ON events "
                   f"WHEN old.seq <= (SELECT backfilled_to FROM {STATE}) "
                   f"OR old.seq >= (SELECT live_from FROM {STATE}) BEGIN "
                   f"INSERT INTO {TABLE} ({TABLE}, rowid, type, source, body) "
                   f"VALUES ('delete', old.seq, {old}); END")


# ------------------------------------------------------------------------ backfill
def pending(cursor: Any) -> int:
    """About how many existing events wait to be indexed (0 when complete or off)."""
    now = state(cursor)
    if not now.enabled or now.complete:
        return 0
    row = cursor.execute("SELECT count(*) FROM events WHERE seq > ? AND seq < ?",
                         (now.backfilled_to, now.live_from)).fetchone()
    return int(row[0])


def backfill(db: peewee.Database, *, limit: int) -> int:
    """Index the next ``limit`` existing events above ``backfilled_to`` and move it past them,
    in one transaction of its own (after a crash the next step starts where the last commit
    left). Returns how many events it indexed; 0 when nothing waits (then, if the watermark
    had not reached ``live_from - 1``, it does now). PostgreSQL: nothing to do, 0."""
    if not available(db):
        return 0
    with db.atomic("IMMEDIATE"):
        cursor = db.cursor()
        now = state(cursor)
        if not now.enabled or now.complete:
            return 0
        spec = _spec_from_fingerprint(now.spec)
        top = cursor.execute("SELECT max(seq) FROM (SELECT seq FROM events WHERE seq > ? "
                             "AND seq < ? ORDER BY seq LIMIT ?)",
                             (now.backfilled_to, now.live_from, limit)).fetchone()[0]
        if top is None:
            cursor.execute(f"UPDATE {STATE} SET backfilled_to = live_from - 1")
            log.info("search_backfill_complete")
            return 0
        kind, source, body = spec.columns("e")
        cursor.execute(f"INSERT INTO {TABLE} (rowid, type, source, body) "
                       f"SELECT e.seq, {kind}, {source}, {body} FROM events e "
                       "WHERE e.seq > ? AND e.seq <= ? ORDER BY e.seq",
                       (now.backfilled_to, top))
        done = cursor.rowcount
        cursor.execute(f"UPDATE {STATE} SET backfilled_to = ?", (int(top),))
    return int(done)


def _spec_from_fingerprint(text: str) -> Spec:
    fields, rules, tokenizer = json.loads(text)
    return Spec(tuple(fields), tuple((t, tuple(p)) for t, p in rules), tokenizer)


def backfill_all(db: peewee.Database, *, batch: int,
                 progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> int:
    """``backfill`` in steps of ``batch`` until nothing waits (or ``should_stop``); calls
    ``progress(indexed)`` after each step. Returns how many events it indexed."""
    total = 0
    while not should_stop():
        done = backfill(db, limit=batch)
        if not done:
            with db.atomic():
                if state(db.cursor()).complete or not state(db.cursor()).enabled:
                    break
            continue
        total += done
        if progress is not None:
            progress(done)
    return total


def integrity_check(db: peewee.Database) -> None:
    """The index against the events: FTS5's own ``integrity-check`` of its structure, then the
    tokens of every indexed event (as the view computes its text now) compared with the index,
    through a fresh index of the same events in a temporary table (FTS5's content check,
    ``rank = 1``, cannot read a view that calls ``json_tree``). Reads every indexed event:
    seconds per 100,000. Raises ``StorageError`` naming how many tokens differ."""
    if not available(db):
        return
    try:
        with db.atomic():
            cursor = db.cursor()
            cursor.execute(f"INSERT INTO {TABLE} ({TABLE}) VALUES ('integrity-check')")
            tokenizer = _tokenizer_in_file(cursor)
            cursor.execute("DROP TABLE IF EXISTS temp.search_check")
            cursor.execute("CREATE VIRTUAL TABLE temp.search_check USING fts5(type, source, "
                           f"body, content='', tokenize={_literal(tokenizer)})")
            cursor.execute("INSERT INTO temp.search_check (rowid, type, source, body) "
                           f"SELECT seq, type, source, body FROM {VIEW}")
            for name, table, schema in (("search_check_have", TABLE, "main"),
                                        ("search_check_want", "search_check", "temp")):
                cursor.execute(f"DROP TABLE IF EXISTS temp.{name}")
                cursor.execute(f"CREATE VIRTUAL TABLE temp.{name} USING fts5vocab({schema}, "
                               f"{table}, instance)")
            differ = cursor.execute(
                "SELECT count(*) FROM (SELECT term, doc, col, offset FROM temp.search_check_have "
                "EXCEPT SELECT term, doc, col, offset FROM temp.search_check_want) ").fetchone()[0]
            differ += cursor.execute(
                "SELECT count(*) FROM (SELECT term, doc, col, offset FROM temp.search_check_want "
                "EXCEPT SELECT term, doc, col, offset FROM temp.search_check_have) ").fetchone()[0]
            for name in ("search_check_have", "search_check_want", "search_check"):
                cursor.execute(f"DROP TABLE temp.{name}")
    except (peewee.DatabaseError, sqlite3.Error) as exc:
        raise StorageError(f"the search index is damaged: {exc}", path=str(db.database)) from exc
    if differ:
        raise StorageError(f"the search index does not match the events: {differ} tokens differ "
                           "(kairo-sidecar search-index rebuild --reset indexes them again)",
                           path=str(db.database))


# ------------------------------------------------------------------------ reads
class Hit(NamedTuple):
    seq: int
    rank: float
    snippet: str


class Found(NamedTuple):
    """One page of matches (seq, rank, snippet) and where the index stands."""

    hits: list[Hit]
    more: bool
    state: State
    window: int | None = None  # ranked among the newest this many matches only (more matched)


_FTS = peewee.Table(TABLE)
_ROWID = peewee.Column(_FTS, "rowid")
_MATCH = peewee.Column(_FTS, TABLE)


def _rank_after(after: str) -> tuple[float, int]:
    rank, sep, seq = after.rpartition(":")
    try:
        if not sep:
            raise ValueError
        return float(rank), int(seq)
    except ValueError:
        raise FilterError("after: not a cursor of a search ranked by relevance (use the "
                          "answer's next)", field="after") from None


def _pg_state(spec: str | None) -> State:
    """PostgreSQL's index covers every event: complete when it exists, off when not."""
    return State(0, 1, spec) if spec is not None else State(0, OFF, "")


def matches(db: peewee.Database, fts_query: str | Query, cond: Conditions, *, order: str, limit: int,
            after: int | str | None, marks: tuple[str, str] = ("[", "]"),
            rank_window: int = 0) -> Found:
    """The ``limit`` best (``order`` ``rank``: bm25, then ``seq``) or newest/oldest (``desc``/
    ``asc``: by ``seq``) indexed events matching ``fts_query`` (``core.search_query``) and the
    filter ``cond``, after the cursor ``after`` (a seq; for ``rank`` the ``rank:seq`` of the
    last hit), each with a snippet. ``SearchUnavailable`` when the index is off or absent.

    bm25 costs about 2 µs per match here (FTS5 reads each match's sizes and positions), so a
    word in 134,000 events takes 240 ms to rank: with ``rank_window`` only the newest
    that many matches are ranked (``Found.window`` says when more matched); 0 ranks all.

    ``fts_query`` is a parsed ``Query`` (either engine) or its FTS5 string (SQLite only)."""
    if not available(db):
        if not isinstance(fts_query, Query):
            raise _not_here()
        return _matches_pg(db, fts_query, cond, order=order, limit=limit, after=after,
                           marks=marks, rank_window=rank_window)
    if isinstance(fts_query, Query):
        fts_query = fts_query.fts
    with db.atomic():  # one snapshot: the state and the matches agree
        now = state(db.cursor())
        if not now.enabled:
            raise _off()
        rank = peewee.fn.bm25(peewee.SQL(TABLE))
        terms: list[Any] = [peewee.Expression(_MATCH, "MATCH", fts_query), *cond.terms]

        def select(*columns: Any) -> Any:
            query = peewee.Table(TABLE).select(*columns)
            if cond.terms:  # read each match's event only when a filter needs it
                query = query.join(Event, peewee.JOIN.CROSS, on=(Event.seq == _ROWID))
            return query.where(*terms)

        terms.extend(_seq_bounds(db, cond.created))
        cursor: tuple[float, int] | None = None
        if order == "rank" and after is not None:
            if isinstance(after, int):
                raise FilterError("after: not a cursor of a search ranked by relevance "
                                  "(use the answer's next)", field="after")
            cursor = _rank_after(after)
        if order != "rank" and isinstance(after, str):
            raise FilterError("after: a search ordered by time pages by seq (use the "
                              "answer's next)", field="after")
        windowed: int | None = None
        if order == "rank" and rank_window:
            query = select(_ROWID, rank).order_by(_ROWID.desc()).limit(rank_window + 1)
        elif order == "rank":
            sub = select(_ROWID.alias("seq"), rank.alias("r")).alias("m")
            seq, r = peewee.SQL('"m"."seq"'), peewee.SQL('"m"."r"')
            query = peewee.Select([sub], [seq, r])
            if cursor is not None:
                query = query.where((r > cursor[0]) | ((r == cursor[0]) & (seq > cursor[1])))
            query = query.order_by(r.asc(), seq.asc()).limit(limit + 1)
        else:
            if after is not None:
                terms.append(peewee.Expression(_ROWID, "<" if order == "desc" else ">", after))
            query = (select(_ROWID, rank)
                     .order_by(_ROWID.desc() if order == "desc" else _ROWID.asc())
                     .limit(limit + 1))
        try:
            rows = [(int(s), float(r)) for s, r in db.execute(query).fetchall()]
            if order == "rank" and rank_window:
                # bm25 of the newest ``rank_window`` matches only (its cost is per match)
                rows, windowed = _rank_window(rows, rank_window, cursor, limit)
            more = len(rows) > limit
            rows = rows[:limit]
            snippets = _snippets(db, fts_query, [s for s, _ in rows], marks)
        except ValueError as exc:  # a NUL in a filter value: nothing stored holds it
            if "NUL" in str(exc):
                return Found([], False, now, None)
            raise
        except (peewee.DatabaseError, sqlite3.Error) as exc:
            if "fts5" in str(exc).lower():  # core.search_query quotes every term: a backstop
                raise FilterError("query: cannot be searched as written (quote the words "
                                  "that hold punctuation)", field="query") from None
            raise StorageError(f"search failed: {exc}", path=str(db.database)) from exc
    return Found([Hit(s, r, snippets.get(s, "")) for s, r in rows], more, now, windowed)


RANGE_PROBE = 20_000  # events a time range may hold for its seqs to bound the matches read


def _seq_bounds(db: peewee.Database, created: tuple[int | None, int | None]) -> list[Any]:
    """``rowid BETWEEN`` the lowest and highest seq of the events created in the time range,
    when it holds at most ``RANGE_PROBE`` events (read from the ``created_at`` index): the
    matches are then read from that rowid range only, not from the newest on (the
    ``created_at`` terms stay, so the answer is exact). A wider range (most matches in it)
    or none: nothing."""
    since, until = created
    if since is None and until is None:
        return []
    where, params = [], []
    if since is not None:
        where.append("created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("created_at < ?")
        params.append(until)
    low, high, count = db.execute_sql(
        f"SELECT min(seq), max(seq), count(*) FROM (SELECT seq FROM events WHERE "
        f"{' AND '.join(where)} LIMIT {RANGE_PROBE + 1})", params).fetchone()
    if count > RANGE_PROBE:
        return []
    if not count:
        return [peewee.SQL("0")]  # no event in the range: no match
    return [_ROWID.between(int(low), int(high))]


def _snippets(db: peewee.Database, fts_query: str, seqs: Sequence[int],
              marks: tuple[str, str]) -> dict[int, str]:
    """A snippet per hit (the best column, ``SNIPPET_TOKENS`` tokens around the matches): read
    for the page's events only, as each one reads its text through the view.

    FTS5 runs the query once per value of ``rowid IN (...)``, and a prefix term (``boil*``)
    gathers every matching term's doclist each time: twenty times a page. A query with a
    prefix is therefore run once over the rowid range of the page (``+rowid``: the list
    filters the rows, FTS5 does not look each one up): ``boil*`` at 1,000,000 events 239 ->
    38 ms p50 (``python -m bench.search latency``). A query without one keeps the lookups,
    which read one entry each (a plain word over a wide range would read every match in it)."""
    if not seqs:
        return {}
    holders = ", ".join("?" * len(seqs))
    select = (f"SELECT rowid, snippet({TABLE}, -1, ?, ?, '…', {SNIPPET_TOKENS}) "
              f"FROM {TABLE} WHERE {TABLE} MATCH ? AND ")
    if _has_prefix(fts_query):
        rows = db.execute_sql(f"{select}rowid BETWEEN ? AND ? AND +rowid IN ({holders})",
                              (marks[0], marks[1], fts_query, min(seqs), max(seqs), *seqs))
    else:
        rows = db.execute_sql(f"{select}rowid IN ({holders})",
                              (marks[0], marks[1], fts_query, *seqs))
    return {int(seq): text or "" for seq, text in rows.fetchall()}


def _has_prefix(fts_query: str) -> bool:
    """Whether ``fts_query`` (``core.search_query``: every term quoted) holds a prefix term:
    a ``*`` outside the quotes."""
    return "*" in "".join(fts_query.split('"')[::2])


def _not_here() -> SearchUnavailable:
    return SearchUnavailable("search_unavailable", "full-text search on PostgreSQL needs a "
                             "parsed query (core.search_query.parse)")


def _cursor_of(order: str, after: int | str | None) -> tuple[float, int] | None:
    if order == "rank" and after is not None:
        if isinstance(after, int):
            raise FilterError("after: not a cursor of a search ranked by relevance "
                              "(use the answer's next)", field="after")
        return _rank_after(after)
    if order != "rank" and isinstance(after, str):
        raise FilterError("after: a search ordered by time pages by seq (use the "
                          "answer's next)", field="after")
    return None


def _rank_window(rows: list[tuple[int, float]], rank_window: int,
                 cursor: tuple[float, int] | None, limit: int
                 ) -> tuple[list[tuple[int, float]], int | None]:
    """``(seq, rank)`` of the newest matches (at most ``rank_window + 1``, newest first): the
    newest ``rank_window`` sorted by rank, then seq, after ``cursor``, ``limit + 1`` at most;
    and ``rank_window`` if more matched than it holds (else ``None``)."""
    windowed = None
    if len(rows) > rank_window:
        windowed = rank_window
        rows = rows[:rank_window]
    ranked = sorted((r, s) for s, r in rows)
    if cursor is not None:
        ranked = [(r, s) for r, s in ranked if (r, s) > cursor]
    return [(s, r) for r, s in ranked[:limit + 1]], windowed


def _matches_pg(db: peewee.Database, query: Query, cond: Conditions, *, order: str, limit: int,
                after: int | str | None, marks: tuple[str, str], rank_window: int) -> Found:
    """``matches`` on PostgreSQL: the GIN index's ``@@``, ``-ts_rank`` as the rank (lower is
    better, as bm25), snippets by ``ts_headline``."""
    cursor = _cursor_of(order, after)
    with db.atomic():
        spec = search_pg.index_spec(db)
        if spec is None:
            raise _off()
        now = _pg_state(spec)
        fields = search_pg.fields_of(spec)
        tsq = query.tsquery
        hit = peewee.SQL(search_pg.match_sql(fields), [tsq])
        rank = peewee.SQL(search_pg.rank_sql(fields), [tsq])
        seq = Event.seq
        base = Event.select(seq.alias("seq"), rank.alias("r")).where(hit, *cond.terms)
        windowed: int | None = None
        try:
            if order == "rank" and rank_window:
                rows = [(int(s), float(r)) for s, r in
                        db.execute(base.order_by(seq.desc()).limit(rank_window + 1)).fetchall()]
                rows, windowed = _rank_window(rows, rank_window, cursor, limit)
            elif order == "rank":
                sub = base.alias("m")
                m_seq, m_r = peewee.SQL('"m"."seq"'), peewee.SQL('"m"."r"')
                page = peewee.Select([sub], [m_seq, m_r])
                if cursor is not None:
                    page = page.where((m_r > cursor[0])
                                      | ((m_r == cursor[0]) & (m_seq > cursor[1])))
                page = page.order_by(m_r.asc(), m_seq.asc()).limit(limit + 1)
                rows = [(int(s), float(r)) for s, r in db.execute(page).fetchall()]
            else:
                if after is not None:
                    base = base.where(peewee.Expression(seq, "<" if order == "desc" else ">",
                                                        after))
                page = base.order_by(seq.desc() if order == "desc" else seq.asc()).limit(limit + 1)
                rows = [(int(s), float(r)) for s, r in db.execute(page).fetchall()]
            more = len(rows) > limit
            rows = rows[:limit]
            snippets = search_pg.snippets(db, fields, tsq, [s for s, _ in rows], marks)
        except ValueError as exc:  # a NUL in a filter value: nothing stored holds it
            if "NUL" in str(exc):
                return Found([], False, now, None)
            raise
        except peewee.DatabaseError as exc:
            raise StorageError(f"search failed: {exc}", path=str(db.database)) from exc
    return Found([Hit(s, r, snippets.get(s, "")) for s, r in rows], more, now, windowed)


def _off() -> SearchUnavailable:
    return SearchUnavailable("search_disabled", "full-text search is off: set [search] "
                             "enabled = true and restart the sidecar")


def unavailable(db: peewee.Database) -> SearchUnavailable | None:
    """Why ``matches`` would refuse on ``db`` (the error it raises), or None when it answers."""
    if not available(db):
        return None if search_pg.index_spec(db) is not None else _off()
    return None if state(db.cursor()).enabled else _off()


def search_state(db: peewee.Database) -> State:
    """The index's state (PostgreSQL: complete when its index exists)."""
    if not available(db):
        return _pg_state(search_pg.index_spec(db))
    return state(db.cursor())
