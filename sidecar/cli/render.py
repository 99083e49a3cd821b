"""Output for humans on a terminal (``--format table``): fixed columns cut to the terminal
width, and key/value lists. JSON stays the default for scripts; this is for reading."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

import msgspec

from sidecar.core import paths
from sidecar.core.units import format_size

FORMATS = ("json", "table")
_SEP = "  "
_ELLIPSIS = "…"


class Column(NamedTuple):
    title: str
    width: int  # characters; 0: whatever is left of the line (the last column)


def terminal_width() -> int:
    """``COLUMNS`` or the terminal's width; 120 when the output is not a terminal."""
    return max(shutil.get_terminal_size((120, 24)).columns, 20)


def when(ms: int | None) -> str:
    """Epoch ms -> ``2026-11-22T10:00:00Z`` (``-`` for none)."""
    if ms is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def compact(value: Any) -> str:
    """Any JSON value (decoded, or ``msgspec.Raw`` as read from a file) as compact JSON on one
    line: a newline inside a string stays ``\\n``."""
    try:
        if isinstance(value, msgspec.Raw):
            value = msgspec.json.decode(value)
        return msgspec.json.encode(value).decode()
    except (msgspec.DecodeError, TypeError):
        return str(value)


def _clean(value: Any) -> str:
    """One line: control characters (a newline in a topic...) shown as ``?``."""
    text = "-" if value is None or value == "" else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)


def _fit(text: str, width: int) -> str:
    if len(text) > width:
        return text[: max(width - 1, 0)] + _ELLIPSIS
    return text.ljust(width)


class Table:
    """Rows under a header, each cell cut to its column, each line cut to ``width``. The header
    is written before the first row, so pages can be streamed."""

    def __init__(self, out: TextIO, columns: Sequence[Column], *, width: int | None = None) -> None:
        self._out = out
        self._columns = columns
        self._width = width or terminal_width()
        self._started = False

    def _line(self, cells: Sequence[Any]) -> str:
        parts = []
        for column, cell in zip(self._columns, cells, strict=True):
            text = _clean(cell)
            parts.append(_fit(text, column.width) if column.width else text)
        line = _SEP.join(parts).rstrip()
        return _fit(line, self._width).rstrip() if len(line) > self._width else line

    def rows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            if not self._started:
                self._started = True
                self._out.write(self._line([c.title for c in self._columns]) + "\n")
            self._out.write(self._line(row) + "\n")
        self._out.flush()


# 120 columns show a whole UUID; a narrower terminal cuts the id, the last column.
EVENT_COLUMNS = (Column("seq", 6), Column("time", 20), Column("type", 22), Column("source", 12),
                 Column("correlation", 14), Column("id", 0))


class EventTable:
    """``query --format table``: seq, created time, type, source, correlation id, id. ``key``
    (``latest``): the value of that JSON path first, under the path as its title, in place of
    the correlation id (so a whole id still fits 120 columns)."""

    def __init__(self, out: TextIO, *, key: str | None = None, width: int | None = None) -> None:
        self._key = key
        self._path = None if key is None or paths.path_error(key) else paths.parse(key)
        columns = EVENT_COLUMNS if key is None else \
            (Column(key, 14), *(c for c in EVENT_COLUMNS if c.title != "correlation"))
        self._table = Table(out, columns, width=width)

    def events(self, events: Iterable[Mapping[str, Any]]) -> None:
        self._table.rows(self._row(e) for e in events)

    def _row(self, e: Mapping[str, Any]) -> tuple[Any, ...]:
        head = (e.get("seq"), when(e.get("created_at")), e.get("type"), e.get("source"))
        if self._key is not None:
            return (_at(e, self._path), *head, e.get("id"))
        return (*head, _correlation(e.get("metadata")), e.get("id"))


def _decoded(value: Any) -> Any:
    if isinstance(value, msgspec.Raw):  # a JSON answer read from a file embeds it raw
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return None
    return value


def _at(event: Mapping[str, Any], path: paths.JsonPath | None) -> str | None:
    """The value at ``path`` (``payload.a[0]``) of an event: a string as it is, anything else
    as compact JSON; None when it is not there."""
    if path is None:
        return None
    value = _decoded(event.get(path.column))
    for part in paths.parts(path):
        found = (isinstance(part, int) and isinstance(value, list) and part < len(value)) \
            or (isinstance(part, str) and isinstance(value, Mapping) and part in value)
        if not found:
            return None
        value = value[part]
    return value if isinstance(value, str) else compact(value)


def _correlation(metadata: Any) -> Any:
    metadata = _decoded(metadata)
    if isinstance(metadata, Mapping):
        return metadata.get("correlationId", metadata.get("correlation_id"))
    return None


# 120 columns: a 28-character key, the version, the time, and 59 characters of the value.
KV_COLUMNS = (Column("key", 28), Column("version", 7), Column("updated", 20), Column("value", 0))
_OP = Column("op", 6)


class KvTable:
    """``kv list|watch --format table``: key, version, updated time, the value as compact JSON
    (cut to the width: a long value never wraps). ``ops`` (``kv watch``): the change's ``op``
    (put, delete; ``-`` for a current value sent before ``caught up``) first."""

    def __init__(self, out: TextIO, *, ops: bool = False, width: int | None = None) -> None:
        self._ops = ops
        self._table = Table(out, ((_OP,) if ops else ()) + KV_COLUMNS, width=width)

    def entries(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self._table.rows(((e.get("op"),) if self._ops else ()) + _kv_row(e) for e in entries)


def _kv_row(e: Mapping[str, Any]) -> tuple[Any, ...]:
    deleted = e.get("op") == "delete" and e.get("value") is None
    return (e.get("key"), e.get("version"), when(e.get("updated_at")),
            None if deleted else compact(e.get("value")))


def kv_entry(out: TextIO, entry: Mapping[str, Any], *, width: int | None = None) -> None:
    """``kv get --format table``: key, version, updated, value lines (the value as compact
    JSON, cut to the width)."""
    key_values(out, {"key": entry.get("key"), "version": entry.get("version"),
                     "updated_at": entry.get("updated_at"), "value": compact(entry.get("value"))},
               width=width, nested=False)


class SearchTable:
    """``search --format table``: seq, time, type, rank, the snippet (as wide as the terminal
    allows, 16 to 60 characters), then the id (cut first on a narrow terminal)."""

    def __init__(self, out: TextIO, *, width: int | None = None) -> None:
        width = width or terminal_width()
        fixed = (Column("seq", 6), Column("time", 20), Column("type", 22), Column("rank", 8))
        used = sum(c.width for c in fixed) + 36 + len(_SEP) * (len(fixed) + 1)
        snippet = Column("snippet", min(max(width - used, 16), 60))
        self._table = Table(out, (*fixed, snippet, Column("id", 0)), width=width)

    def hits(self, hits: Iterable[Mapping[str, Any]]) -> None:
        self._table.rows(self._row(h) for h in hits)

    @staticmethod
    def _row(hit: Mapping[str, Any]) -> tuple[Any, ...]:
        e = hit.get("event") or {}
        rank = hit.get("rank")
        return (e.get("seq"), when(e.get("created_at")), e.get("type"),
                f"{rank:.3g}" if isinstance(rank, int | float) else rank, hit.get("snippet"),
                e.get("id"))


def key_values(out: TextIO, data: Mapping[str, Any], *, width: int | None = None,
               nested: bool = True) -> None:
    """``key   value`` lines, each cut to ``width`` (default: the terminal's); ``*_at`` times as
    RFC 3339, ``*_bytes`` with a readable size; a nested object as ``parent.key`` lines
    (``nested``), a list or a boolean as JSON."""
    width = width or terminal_width()
    flat = dict(_flatten(data) if nested else data.items())
    pad = max((len(k) for k in flat), default=0)
    for key, value in flat.items():
        if key.endswith("_at") and isinstance(value, int) and not isinstance(value, bool):
            shown = f"{when(value)} ({value})"
        elif key.endswith("_bytes") and isinstance(value, int) and not isinstance(value, bool):
            shown = f"{format_size(value)} ({value})"
        elif isinstance(value, bool | list | tuple | msgspec.Raw):
            shown = _clean(compact(value))
        else:
            shown = _clean(value)
        line = f"{_clean(key).ljust(pad)}  {shown}".rstrip()
        out.write((_fit(line, width).rstrip() if len(line) > width else line) + "\n")
    out.flush()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        value = _decoded(value)
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
