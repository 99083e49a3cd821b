"""Filters -> Peewee queries on ``models.Event``. Builds queries, executes nothing.

Pagination is keyset on ``seq`` (the never-reused global sequence): a page is ``seq > after``
(``seq < after`` descending), so walking ``next`` returns every matching event exactly once even
while the single writer goes on committing (it commits in ``seq`` order). Validation problems
raise ``FilterError`` naming the field (the API answers it as ``bad_request``).

SQLite specifics are kept to three spots: ``GLOB`` for type globs, ``json_extract``/``json_type``
for ``where``, and ``kairo_mqtt_match`` (a function every read connection registers, see
``reads``) for a ``topic`` filter with wildcards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import peewee

from models import Event
from sidecar.core import topics
from sidecar.core.events import StoredEvent, parse_timestamp
from sidecar.core.filters import MAX_INT64, Filter
from sidecar.errors import FilterError, PayloadError
from sidecar.storage import keys

MQTT_MATCH_FUNCTION = "kairo_mqtt_match"

# The columns of an event in an answer, in ``StoredEvent`` order.
EVENT_FIELDS = tuple(getattr(Event, name) for name in StoredEvent._fields)

_WHERE_KEY = re.compile(r"^(payload|metadata)((?:\.[A-Za-z0-9_\-]{1,128}|\[\d{1,6}\])+)$")
_WHERE_SEGMENT = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]")


class Conditions(NamedTuple):
    """A validated filter: the WHERE terms (without the cursor) and the cursor."""

    terms: tuple[peewee.ColumnBase, ...]
    after: int | None


def conditions(request: Filter) -> Conditions:
    """Validate ``request``'s filters and turn them into WHERE terms; ``FilterError`` if one
    cannot be used."""
    terms: list[peewee.ColumnBase] = []
    if request.type is not None:
        terms.append(_type_term(request.type))
    if request.source is not None:
        terms.append(_in_or_eq(Event.source, request.source))
    if request.topic is not None:
        terms.append(_topic_term(request.topic))
    since = _time(request.since, "since")
    until = _time(request.until, "until")
    if since is not None:
        terms.append(Event.created_at >= since)
    if until is not None:
        terms.append(Event.created_at < until)
    if since is not None and until is not None and since > until:
        raise FilterError("until: before since", field="until")
    for name in ("correlation_id", "causation_id", "trace_id"):
        value = getattr(request, name)
        if value is not None:
            terms.append(keys.seq_term(name, value))  # through event_keys: no B-tree on ids
    if request.where:
        terms.extend(_where_term(key, value) for key, value in request.where.items())
    return Conditions(tuple(terms), request.after)


def page(cond: Conditions, *, limit: int, order: str = "asc",
         after: int | None = None) -> peewee.Select:
    """One page of matching events in ``seq`` order, ``limit`` rows at most, as tuples in
    ``EVENT_FIELDS`` (``StoredEvent``) order; ``after`` (default: the filter's own) is the cursor."""
    cursor = cond.after if after is None else after
    query = Event.select(*EVENT_FIELDS)
    terms = list(cond.terms)
    if cursor is not None:
        terms.append(Event.seq > cursor if order == "asc" else Event.seq < cursor)
    if terms:
        query = query.where(*terms)
    order_by = Event.seq.asc() if order == "asc" else Event.seq.desc()
    return query.order_by(order_by).limit(limit).tuples()


def page_keys(cond: Conditions, *, limit: int, order: str = "asc",
              after: int | None = None) -> peewee.Select:
    """The ``seq`` of each event of ``page(...)``. When the plan sorts (a ``type`` index read
    out of ``seq`` order), SQLite's sorter then holds these integers, not whole events."""
    return page(cond, limit=limit, order=order, after=after).select(Event.seq)


def by_seqs(seqs: list[int], *, order: str = "asc") -> peewee.Select:
    """The events with these ``seq`` values, in ``seq`` order (rowid lookups, no sort)."""
    order_by = Event.seq.asc() if order == "asc" else Event.seq.desc()
    return Event.select(*EVENT_FIELDS).where(Event.seq.in_(seqs)).order_by(order_by).tuples()


def by_id(event_id: str) -> peewee.Select:
    return Event.select(*EVENT_FIELDS).where(keys.seq_term("id", event_id)).limit(1).tuples()


def summary() -> peewee.Select:
    """``(count, oldest created_at, newest created_at)`` of the stored events."""
    return Event.select(peewee.fn.COUNT(Event.seq), peewee.fn.MIN(Event.created_at),
                        peewee.fn.MAX(Event.created_at)).tuples()


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


def _type_term(value: str | Sequence[str]) -> peewee.ColumnBase:
    """Exact types (``IN``) and globs (``*`` any run, ``?`` one character; SQL GLOB)."""
    values = [value] if isinstance(value, str) else list(value)
    exact: list[str] = []
    terms: list[peewee.ColumnBase] = []
    for i, item in enumerate(values):
        field = "type" if isinstance(value, str) else f"type[{i}]"
        if is_glob(item):
            problem = _glob_error(item)
            if problem:
                raise FilterError(f"{field}: bad glob {item!r}: {problem}", field=field)
            terms.append(peewee.Expression(Event.type, "GLOB", item))
        else:
            exact.append(item)
    globs = [item for item in values if is_glob(item)]
    if globs:  # one IN over the stored types that match: pages come from (type, seq) unsorted
        return Event.type.in_(_stored_types(exact, globs))
    if exact:
        terms.insert(0, Event.type == exact[0] if len(exact) == 1 else Event.type.in_(exact))
    if len(terms) == 1:
        return terms[0]
    # One flat OR: ``a | b | c`` nests a level per term, and SQLite's parser stack overflows at
    # about 100 levels (``type`` takes up to 100 globs).
    return peewee.NodeList(terms, " OR ", parens=True)


# The distinct stored types, found by skipping through the (type, ...) index one type at a time
# (a few index seeks per type, however many events there are).
_DISTINCT_TYPES = (
    "SELECT t FROM (WITH RECURSIVE types(t) AS (SELECT (SELECT min(type) FROM {table}) "
    "UNION ALL SELECT (SELECT min(type) FROM {table} WHERE type > types.t) FROM types "
    "WHERE types.t IS NOT NULL) SELECT t FROM types) WHERE "
)


def _stored_types(exact: list[str], globs: list[str]) -> peewee.SQL:
    """``(SELECT ...)``: the stored types equal to one of ``exact`` or matching a glob.

    ``type GLOB ? ORDER BY seq LIMIT n`` made SQLite sort every event of the matching types;
    ``type IN (those types) ORDER BY seq LIMIT n`` reads each type's index range in seq order
    and stops after n (BENCHMARKS.md: 15 ms -> 0.5 ms for a 15 % glob at 1,000,000 events)."""
    table = f'"{Event._meta.table_name}"'
    conditions = ["t GLOB ?"] * len(globs)
    if exact:
        conditions.append(f"t IN ({', '.join('?' * len(exact))})")
    sql = "(" + _DISTINCT_TYPES.format(table=table) + " OR ".join(conditions) + ")"
    return peewee.SQL(sql, [*globs, *exact])


def _topic_term(topic_filter: str) -> peewee.ColumnBase:
    problem = topics.filter_error(topic_filter)
    if problem:
        raise FilterError(f"topic: {problem}", field="topic")
    if "+" not in topic_filter and "#" not in topic_filter:
        return Event.topic == topic_filter
    return getattr(peewee.fn, MQTT_MATCH_FUNCTION)(topic_filter, Event.topic) == 1


def _time(value: int | str | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value, field)
    except PayloadError as exc:
        raise FilterError(exc.reason, field=field) from None


def json_path(key: str) -> tuple[str, str]:
    """``payload.a.b[0]`` -> ``("payload", '$."a"."b"[0]')``; ``FilterError`` if malformed."""
    match = _WHERE_KEY.match(key)
    if not match:
        raise FilterError(f"where: key {key!r} must be payload.<path> or metadata.<path> "
                          "(letters, digits, _ and - per level, [n] for an array index)",
                          field=f"where.{key}")
    parts = []
    for name, index in _WHERE_SEGMENT.findall(match.group(2)):
        parts.append(f'."{name}"' if name else f"[{index}]")
    return match.group(1), "$" + "".join(parts)


def _where_term(key: str, value: Any) -> peewee.ColumnBase:
    """Equality on a JSON path. Strings and numbers compare with ``json_extract`` (a JSON
    string never equals a number); ``true``/``false``/``null`` compare the JSON type."""
    column_name, path = json_path(key)
    column = Event.payload if column_name == "payload" else Event.metadata
    if value is None or isinstance(value, bool):
        kind = "null" if value is None else ("true" if value else "false")
        return peewee.fn.json_type(column, path) == kind
    if isinstance(value, int) and not -MAX_INT64 - 1 <= value <= MAX_INT64:
        raise FilterError(f"where.{key}: integer out of range (SQLite holds 64-bit integers; "
                          "compare a larger number as a float)", field=f"where.{key}")
    return peewee.fn.json_extract(column, path) == value

