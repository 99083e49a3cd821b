"""Filters -> Peewee queries on ``models.Event``. Builds queries, executes nothing.

Pagination is keyset on ``seq`` (the never-reused global sequence): a page is ``seq > after``
(``seq < after`` descending), so walking ``next`` returns every matching event exactly once even
while the single writer goes on committing (it commits in ``seq`` order). Validation problems
raise ``FilterError`` naming the field (the API answers it as ``bad_request``).

What differs per engine (type globs, ``where`` on JSON, ``topic`` filters with wildcards, and
whether a type's page streams FTS5 rowids) comes from ``storage.dialect``: the terms are
``dialect.Rendered`` nodes that compile for the database that runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import peewee

from models import Event, EventType
from sidecar.core import paths, topics
from sidecar.core.events import StoredEvent, parse_timestamp
from sidecar.core.filters import MAX_INT64, Filter
from sidecar.errors import FilterError, PayloadError
from sidecar.storage import keys
from sidecar.storage.dialect import MQTT_MATCH_FUNCTION, SQLITE, Dialect, Rendered

__all__ = ["MQTT_MATCH_FUNCTION", "Conditions", "SeqWindow", "conditions", "page", "topic_term",
           "window_arms"]

# The columns of an event in an answer, in ``StoredEvent`` order.
EVENT_FIELDS = tuple(getattr(Event, name) for name in StoredEvent._fields)



class SeqWindow(NamedTuple):
    """Where a time range's events lie in ``seq``, read from the ``(created_at, type)`` index
    in one snapshot: every event in the range stored by then (``seq <= newest``) has ``low <=
    seq <= high`` (``None``: none was); an event stored later has ``seq > newest`` (seqs are
    never reused, they commit in order on both engines, and ``created_at`` never changes)."""

    low: int | None
    high: int | None
    newest: int


class Conditions(NamedTuple):
    """A validated filter: the WHERE terms (without the cursor), the cursor, and for a type
    filter that nothing narrower drives, the ``event_keys`` MATCH of its type tokens (the
    page is then read by streaming those rowids in ``seq`` order; ``terms`` still hold the
    type, so they alone select the same events)."""

    terms: tuple[peewee.ColumnBase, ...]
    after: int | None
    types: peewee.Node | str | None = None
    by_time: bool = False  # read the (created_at, type) index range, then sort its seqs
    unindexed: tuple[str, ...] = ()  # the ``where`` keys no path index serves
    created: tuple[int | None, int | None] = (None, None)  # since, until (also in ``terms``)
    time_only: bool = False  # since and until, and nothing keyed: no type, id or indexed path
    # since and/or until, and nothing keyed, no type: the range may drive the page (a reader
    # counts it, ``estimate``, then sets ``by_time`` or ``window``)
    ranged: bool = False
    window: SeqWindow | None = None  # walk only these seqs (``Reader.seq_window``: a replay)


def conditions(request: Filter, *, indexed: frozenset[str] | set[str] = frozenset()) -> Conditions:
    """Validate ``request``'s filters and turn them into WHERE terms; ``FilterError`` if one
    cannot be used. ``indexed``: the names of the path indexes in the file
    (``storage.indexes.existing``); a ``where`` key with one reads it."""
    terms: list[peewee.ColumnBase] = []
    types: peewee.Node | str | None = None
    if request.type is not None:
        terms.append(_type_term(request.type))
    if request.source is not None:
        terms.append(_in_or_eq(Event.source, request.source))
    if request.topic is not None:
        terms.append(_topic_term(request.topic))
    since = _time(request.since, "since")
    until = _time(request.until, "until")
    terms.extend(_created_terms(since, until))
    if since is not None and until is not None and since > until:
        raise FilterError("until: before since", field="until")
    for name in keys.FILTERS:
        value = getattr(request, name)
        if value is not None:
            terms.append(keys.seq_term(name, value))  # through event_keys: no B-tree on ids
    by_index: list[str] = []
    unindexed: list[str] = []
    if request.where:
        for key, value in request.where.items():
            terms.append(_where_term(key, value))
            usable = (not isinstance(value, bool) and value is not None
                      and paths.parse(key).index_name in indexed)
            (by_index if usable else unindexed).append(key)
    keyed = any(getattr(request, name) is not None for name in keys.FILTERS) or bool(by_index)
    timed = since is not None or until is not None
    if request.type is not None and not keyed and not timed:
        # Nothing narrower to read from: the type's own tokens, in seq order. With an id, its
        # few rows are read and the type tested on them; with a time range, see by_time.
        types = _type_match(request.type)
    # A type and a time range: the (created_at, type) index holds both, and its seqs are
    # sorted. Without this SQLite, which cannot tell how many events a range holds, may walk
    # every event in seq order instead to avoid the sort (270 ms for "since" an hour ago at
    # 1,000,000 events; 3 ms through the index). As (type, created_at) did before 005.
    by_time = request.type is not None and not keyed and timed
    time_only = request.type is None and not keyed and since is not None and until is not None
    ranged = request.type is None and not keyed and timed
    return Conditions(tuple(terms), request.after, types, by_time, tuple(unindexed),
                      (since, until), time_only, ranged)


# A time range with fewer events than this is read through the (created_at, type) index and
# its seqs sorted (at most this many: 1.5 ms at 10,000); counting up to it reads at most this
# many index entries (0.6 ms; both at 1,000,000 events). See ``estimate``.
SMALL_RANGE = 10_000


def _created_terms(since: int | None, until: int | None) -> list[peewee.ColumnBase]:
    """``since <= created_at < until``, each bound when given."""
    terms: list[peewee.ColumnBase] = []
    if since is not None:
        terms.append(Event.created_at >= since)
    if until is not None:
        terms.append(Event.created_at < until)
    return terms


def estimate(cond: Conditions, *, cap: int = SMALL_RANGE) -> peewee.Select:
    """How many events ``cond``'s time range holds, counted up to ``cap`` in the
    ``(created_at, type)`` index (no event row read). Nothing tells SQLite how many events a
    range holds: with ``since`` alone it walks every event in seq order (270 ms at 1,000,000
    events when none matches), where a range of a few thousand is read from the index in a
    few ms. A range of ``cap`` or more is left to that walk: matches are then plentiful, and
    sorting them all could cost more than the walk finds them in."""
    inner = Event.select(peewee.SQL("1")).where(*_created_terms(*cond.created)).limit(cap)
    return peewee.Select([inner.alias("range_rows")],
                         [peewee.fn.COUNT(peewee.SQL("*"))]).tuples()


def window(cond: Conditions) -> peewee.Select:
    """``(low, high, newest)`` of ``SeqWindow`` for ``cond``'s time range, in one statement:
    a read of the range in the ``(created_at, type)`` index (``seq + 0``: no min/max walk of
    the seq order) and of the newest seq. Cheap for a small range only (``estimate``)."""
    seq = peewee.Expression(Event.seq, "+", peewee.SQL("0"))
    newest = Event.select(peewee.fn.COALESCE(peewee.fn.MAX(Event.seq), 0))
    return (Event.select(peewee.fn.MIN(seq), peewee.fn.MAX(seq), newest)
            .where(*_created_terms(*cond.created)).tuples())


def page(cond: Conditions, *, limit: int, order: str = "asc",
         after: int | None = None, dialect: Dialect = SQLITE) -> peewee.SelectBase:
    """One page of matching events in ``seq`` order, ``limit`` rows at most, as tuples in
    ``EVENT_FIELDS`` (``StoredEvent``) order; ``after`` (default: the filter's own) is the cursor.
    ``dialect``: the engine that runs it (PostgreSQL reads a type's page from its B-tree)."""
    cursor = cond.after if after is None else after
    if cond.types is not None and dialect.fts_keys:
        return _type_page(cond, limit=limit, order=order, cursor=cursor)
    if cond.window is not None:
        return _window_page(cond, cond.window, limit=limit, order=order, cursor=cursor)
    query = Event.select(*EVENT_FIELDS)
    terms = list(cond.terms)
    by_time = cond.by_time or (cond.time_only and not dialect.fts_keys)
    if cursor is not None:
        # read on the index entries when the range drives the page (``seq + 0``: with a
        # term the index does not cover, SQLite would otherwise walk seq from the cursor
        # and sort all it finds)
        seq = peewee.Expression(Event.seq, "+", peewee.SQL("0")) if by_time else Event.seq
        terms.append(seq > cursor if order == "asc" else seq < cursor)
    if terms:
        query = query.where(*terms)
    # ``seq + 0`` is no index's column: SQLite then sorts, and reads the index that narrows
    # the WHERE most instead of the table in seq order. PostgreSQL likewise for a time range
    # (since and until) alone: its planner, expecting matches spread evenly over seq,
    # otherwise walks the seq index and filters on created_at, half the table for a range in
    # the middle (1.0 s at 5,000,000 events; BENCHMARKS.md, "PostgreSQL next to SQLite at
    # 5,000,000 events"). Not with one bound only: a replay's pages (a cursor and ``until``)
    # would each sort every event before ``until``; walking from the cursor finds them at once.
    # A reader also sets ``by_time`` for one bound when the range is small (``estimate``).
    key = peewee.Expression(Event.seq, "+", peewee.SQL("0")) if by_time else Event.seq
    order_by = key.asc() if order == "asc" else key.desc()
    return query.order_by(order_by).limit(limit).tuples()


def window_arms(cond: Conditions, win: SeqWindow, *, limit: int, order: str,
                cursor: int | None, columns: Sequence[peewee.Node] = (Event.seq,)
                ) -> list[peewee.Select]:
    """The reads of a page that walks ``seq`` only where ``cond``'s events can be
    (``SeqWindow``): the stored ones between ``low`` and ``high``, and those stored after
    ``newest``; each at most ``limit`` rows in ``seq`` order, in the order the page takes them
    (read the next only when one comes short). The walk stops at ``high``, where without the
    window a replay's last page read every later event to find none; it starts at ``low``,
    where a page from the first event walked every earlier one. An arm the cursor has passed
    is left out (one read per page but at the seam)."""
    asc = order == "asc"
    # each arm one seq range, the cursor folded in (SQLite walks from one lower bound only,
    # and not always the cursor's)
    first, last = (0, MAX_INT64) if cursor is None else \
        ((cursor + 1, MAX_INT64) if asc else (0, cursor - 1))
    ranges: list[tuple[int, int]] = []
    if win.low is not None and win.high is not None:
        ranges.append((max(first, win.low), min(last, win.high)))
    ranges.insert(len(ranges) if asc else 0, (max(first, win.newest + 1), last))
    ranges = [(lo, hi) for lo, hi in ranges if lo <= hi] or ranges[:1]
    return [Event.select(*columns)
            .where(*cond.terms, Event.seq >= lo, Event.seq <= hi)
            .order_by(Event.seq.asc() if asc else Event.seq.desc()).limit(limit)
            for lo, hi in ranges]


def _window_page(cond: Conditions, win: SeqWindow, *, limit: int, order: str,
                 cursor: int | None, columns: Sequence[peewee.Node] = EVENT_FIELDS
                 ) -> peewee.SelectBase:
    """``window_arms`` as one statement: merged as ``_type_page`` merges its arms, and cut."""
    arms = window_arms(cond, win, limit=limit, order=order, cursor=cursor, columns=columns)
    if len(arms) == 1:
        return arms[0]
    first, second = (peewee.Select([arm.alias(name)], [peewee.SQL("*")])
                     for arm, name in zip(arms, ("first", "second"), strict=True))
    seq = peewee.SQL('"seq"')
    return first.union_all(second).order_by(seq.asc() if order == "asc" else seq.desc()) \
        .limit(limit)


# event_keys as a table for joins: ``rowid`` is the event's seq, the hidden column named like
# the table takes MATCH.
_KEYS = peewee.Table(keys.TABLE)
_KEYS_ROWID = peewee.Column(_KEYS, "rowid")
_KEYS_MATCH = peewee.Column(_KEYS, keys.TABLE)


def _type_page(cond: Conditions, *, limit: int, order: str, cursor: int | None,
               columns: Sequence[peewee.Node] = EVENT_FIELDS) -> peewee.SelectBase:
    """A page driven by the type tokens, in two arms, each at most ``limit`` rows in ``seq``
    order, merged and cut to ``limit``:

    * the indexed events: FTS5 streams the matching rowids up to the watermark in order from
      the cursor (``MATCH`` + rowid range + ``ORDER BY rowid``: no sort, stops after ``limit``
      matches), and each row is read by ``seq`` and tested against the other terms. CROSS
      JOIN fixes that loop order (SQLite never reorders it);
    * the tail (``seq`` above the watermark, not indexed yet: ``keys``), read by rowid range.

    The watermark is read in each arm from the statement's one snapshot, so no event is in
    both arms or in neither."""
    rowid = _KEYS_ROWID
    watermark = peewee.SQL(keys.WATERMARK)
    asc = order == "asc"
    indexed = [peewee.Expression(_KEYS_MATCH, "MATCH", cond.types), rowid <= watermark, *cond.terms]
    tail = [Event.seq > watermark, *cond.terms]
    if cursor is not None:
        indexed.append(rowid > cursor if asc else rowid < cursor)
        tail.append(Event.seq > cursor if asc else Event.seq < cursor)
    arms = (_KEYS.select(*columns)
            .join(Event, peewee.JOIN.CROSS, on=(Event.seq == rowid))
            .where(*indexed)
            .order_by(rowid.asc() if asc else rowid.desc())
            .limit(limit),
            Event.select(*columns).where(*tail)
            .order_by(Event.seq.asc() if asc else Event.seq.desc())
            .limit(limit))
    # SQLite takes ORDER BY/LIMIT in a compound's arms only inside a subquery.
    first, second = (peewee.Select([arm.alias(name)], [peewee.SQL("*")])
                     for arm, name in zip(arms, ("indexed", "tail"), strict=True))
    seq = peewee.SQL('"seq"')
    return first.union_all(second).order_by(seq.asc() if asc else seq.desc()).limit(limit)


def page_keys(cond: Conditions, *, limit: int, order: str = "asc",
              after: int | None = None, dialect: Dialect = SQLITE) -> peewee.SelectBase:
    """The ``seq`` of each event of ``page(...)``. When the plan sorts (a ``type`` index read
    out of ``seq`` order), SQLite's sorter then holds these integers, not whole events."""
    if cond.types is not None and dialect.fts_keys:
        cursor = cond.after if after is None else after
        return _type_page(cond, limit=limit, order=order, cursor=cursor, columns=(Event.seq,))
    if cond.window is not None:
        cursor = cond.after if after is None else after
        return _window_page(cond, cond.window, limit=limit, order=order, cursor=cursor,
                            columns=(Event.seq,))
    query = page(cond, limit=limit, order=order, after=after, dialect=dialect)
    assert isinstance(query, peewee.Select)  # not a type page: one SELECT
    return query.select(Event.seq)


def by_seqs(seqs: list[int], *, order: str = "asc") -> peewee.Select:
    """The events with these ``seq`` values, in ``seq`` order (rowid lookups, no sort)."""
    order_by = Event.seq.asc() if order == "asc" else Event.seq.desc()
    return Event.select(*EVENT_FIELDS).where(Event.seq.in_(seqs)).order_by(order_by).tuples()


def by_id(event_id: str) -> peewee.Select:
    return Event.select(*EVENT_FIELDS).where(keys.seq_term("id", event_id)).limit(1).tuples()


def counts_by_type(*, since: int, until: int) -> peewee.Select:
    """``(type, events)`` for the events with ``since <= created_at < until``: a read of the
    ``(created_at, type)`` index range alone (no event row), its entries sorted by type."""
    return (Event.select(Event.type, peewee.fn.COUNT(peewee.SQL("*")))
            .where(Event.created_at >= since, Event.created_at < until)
            .group_by(Event.type).tuples())


def summary() -> peewee.Select:
    """``(count, oldest created_at, newest created_at)`` of the stored events, as three
    subqueries: SQLite counts through its smallest index and reads each end of the
    ``created_at`` index (38 ms at 1,000,000 events; the three aggregates in one SELECT scan
    every row: 296 ms)."""
    return peewee.Select(columns=[
        Event.select(peewee.fn.COUNT(peewee.SQL("*"))),
        Event.select(peewee.fn.MIN(Event.created_at)),
        Event.select(peewee.fn.MAX(Event.created_at))]).tuples()


# ------------------------------------------------------------------------------ filters
def _in_or_eq(column: peewee.Field, value: str | Sequence[str]) -> peewee.ColumnBase:
    if isinstance(value, str):
        return column == value
    return column.in_(sorted(set(value)))


def is_glob(value: str) -> bool:
    return "*" in value or "?" in value


def _glob_error(value: str) -> str | None:
    if "[" in value or "]" in value:
        return "character classes ([...]) are not supported in a glob; use * and ?"
    return None


def _split_types(value: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """``(exact types, globs)`` of a ``type`` filter; ``FilterError`` for a bad glob."""
    values = [value] if isinstance(value, str) else list(value)
    exact: list[str] = []
    globs: list[str] = []
    for i, item in enumerate(values):
        field = "type" if isinstance(value, str) else f"type[{i}]"
        if is_glob(item):
            problem = _glob_error(item)
            if problem:
                raise FilterError(f"{field}: bad glob {item!r}: {problem}", field=field)
            globs.append(item)
        else:
            exact.append(item)
    return exact, globs


def _type_term(value: str | Sequence[str]) -> peewee.ColumnBase:
    """Exact types (``IN``) and globs (``*`` any run, ``?`` one character; SQL GLOB), as a
    test on the row: globs become one IN over the stored types they match (``event_types``)."""
    exact, globs = _split_types(value)
    if globs:
        return Event.type.in_(EventType.select(EventType.type).where(_types_where(exact, globs)))
    return Event.type == exact[0] if len(exact) == 1 else Event.type.in_(exact)


def _types_where(exact: list[str], globs: list[str]) -> peewee.Node:
    # One flat OR: nested ORs overflow SQLite's parser stack at about 100 levels (``type``
    # takes up to 100 globs).
    column = EventType.type
    terms: list[peewee.Node] = [Rendered(lambda d, g=g: d.glob(column, g)) for g in globs]
    if exact:
        terms.append(column.in_(exact))
    return peewee.NodeList(terms, glue=" OR ", parens=True)


# "yz" is no type's token (a type's token is y and hex digits): a glob no stored type matches.
_NO_TYPE = '"yz"'


def _type_match(value: str | Sequence[str]) -> peewee.Node | str:
    """The FTS5 query (``event_keys MATCH``) for the events of these types: the exact types'
    tokens, or, with globs, those of the stored types (``event_types``) that match, built by
    SQLite once per query."""
    exact, globs = _split_types(value)
    if not globs:
        return keys.match("type", exact)
    tokens = peewee.fn.coalesce(
        peewee.fn.group_concat(peewee.SQL("'\"y' || hex(type) || '\"'"), " OR "), _NO_TYPE)
    return EventType.select(tokens).where(_types_where(exact, globs))


def _topic_term(topic_filter: str) -> peewee.ColumnBase:
    problem = topics.filter_error(topic_filter)
    if problem:
        raise FilterError(f"topic: {problem}", field="topic")
    return topic_term(Event.topic, topic_filter)


def topic_term(column: peewee.Field, topic_filter: str) -> peewee.ColumnBase:
    """``column`` (a topic) matches the valid MQTT filter ``topic_filter``, on either engine."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return column == topic_filter
    return Rendered(lambda d: d.topic_match(column, topic_filter))


def _time(value: int | str | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value, field)
    except PayloadError as exc:
        raise FilterError(exc.reason, field=field) from None


def json_path(key: str, *, field: str | None = None) -> paths.JsonPath:
    """``payload.a.b[0]`` -> its ``JsonPath``; ``FilterError`` on ``field`` (default
    ``where.<key>``) if malformed."""
    try:
        return paths.parse(key)
    except ValueError:
        name = "where: key" if field is None else f"{field}:"
        raise FilterError(f"{name} {key!r} must be {paths.PATH_RULE}",
                          field=field or f"where.{key}") from None


def path_value(path: paths.JsonPath) -> peewee.ColumnBase:
    """The value at ``path`` as SQL, spelled as the path index spells it (the path inlined),
    in the dialect of the database that runs the query."""
    column = Event.payload if path.column == "payload" else Event.metadata
    return Rendered(lambda dialect: dialect.path_value(column, path))


def _where_term(key: str, value: Any) -> peewee.ColumnBase:
    """Equality on a JSON path. Strings and numbers compare with ``json_extract`` (a JSON
    string never equals a number); ``true``/``false``/``null`` compare the JSON type."""
    path = json_path(key)
    column = Event.payload if path.column == "payload" else Event.metadata
    if isinstance(value, int) and not isinstance(value, bool) \
            and not -MAX_INT64 - 1 <= value <= MAX_INT64:
        raise FilterError(f"where.{key}: integer out of range (SQLite holds 64-bit integers; "
                          "compare a larger number as a float)", field=f"where.{key}")

    def build(dialect: Dialect) -> peewee.Node:
        if dialect.name != "sqlite":
            return dialect.json_equals(column, paths.parts(path), value)
        if value is None or isinstance(value, bool):
            kind = "null" if value is None else ("true" if value else "false")
            return peewee.fn.json_type(column, path.path) == kind
        return path_value(path) == value  # spelled as a path index spells it

    return Rendered(build)

