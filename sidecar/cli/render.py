"""Output for humans on a terminal (``--format table``): fixed columns cut to the terminal
width, and key/value lists. JSON stays the default for scripts; this is for reading."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TextIO

import msgspec

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
    """``query --format table``: seq, created time, type, source, correlation id, id."""

    def __init__(self, out: TextIO, *, width: int | None = None) -> None:
        self._table = Table(out, EVENT_COLUMNS, width=width)

    def events(self, events: Iterable[Mapping[str, Any]]) -> None:
        self._table.rows((e.get("seq"), when(e.get("created_at")), e.get("type"), e.get("source"),
                          _correlation(e.get("metadata")), e.get("id"))
                         for e in events)


def _correlation(metadata: Any) -> Any:
    if isinstance(metadata, msgspec.Raw):  # a JSON answer read from a file embeds it raw
        try:
            metadata = msgspec.json.decode(metadata)
        except msgspec.DecodeError:
            return None
    if isinstance(metadata, Mapping):
        return metadata.get("correlationId", metadata.get("correlation_id"))
    return None


def key_values(out: TextIO, data: Mapping[str, Any]) -> None:
    """``key   value`` lines; ``*_at`` times as RFC 3339, ``*_bytes`` with a readable size; a
    nested object as ``parent.key`` lines."""
    flat = dict(_flatten(data))
    pad = max((len(k) for k in flat), default=0)
    for key, value in flat.items():
        if key.endswith("_at") and isinstance(value, int):
            shown = f"{when(value)} ({value})"
        elif key.endswith("_bytes") and isinstance(value, int):
            shown = f"{format_size(value)} ({value})"
        else:
            shown = _clean(value)
        out.write(f"{key.ljust(pad)}  {shown}\n")
    out.flush()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
