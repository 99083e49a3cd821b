"""Multi-row INSERTs: a batch goes to SQLite in a few statements, not one call per row.

``cursor.executemany`` steps the statement once per row, and Python's sqlite3 releases and
re-takes the GIL around every step. In the daemon the paho network thread holds the GIL most
of the time, so each re-take waits for it: the writer measured 7x slower under that contention
than alone (BENCHMARKS.md, "GIL convoy"). One ``INSERT ... VALUES (...), (...), ...`` per chunk
of rows re-takes it a handful of times per batch, and is a little faster even without
contention. Same statement, same values, same insert-or-ignore: only the number of calls
changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

MAX_CHUNK = 256  # rows per statement at most
_SQLITE_MAX_VARIABLES = 999  # SQLite's limit before 3.32 (the safe fallback)


class BulkInsert:
    """Runs a one-row ``INSERT ... VALUES (?, ...)`` for many rows in power-of-two chunks."""

    def __init__(self, single_row_sql: str, columns: int, *, max_variables: int | None = None,
                 param: str = "?") -> None:
        head, sep, values = single_row_sql.rpartition("VALUES")
        row, close, tail = values.partition(")")  # a tail: PostgreSQL's ON CONFLICT clause
        if not sep or not close or row.count(param) != columns:
            raise ValueError(f"not a one-row INSERT with {columns} parameters: {single_row_sql!r}")
        self._head = head + "VALUES "
        self._row = row.strip() + ")"
        self._tail = tail.rstrip()
        self._columns = columns
        limit = max_variables or _SQLITE_MAX_VARIABLES
        chunk = 1
        while chunk * 2 <= MAX_CHUNK and chunk * 2 * columns <= limit:
            chunk *= 2
        self.chunk = chunk
        self._sql: dict[int, str] = {}

    @classmethod
    def for_sqlite(cls, single_row_sql: str, columns: int) -> BulkInsert:
        """Sized to this SQLite library's ``SQLITE_LIMIT_VARIABLE_NUMBER`` (a build setting)."""
        limit = None
        connection = sqlite3.connect(":memory:")
        try:
            limit = int(connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        except (sqlite3.Error, AttributeError):  # getlimit: Python >= 3.11
            limit = None
        finally:
            connection.close()
        return cls(single_row_sql, columns, max_variables=limit)

    def sql(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = self._head + ", ".join([self._row] * rows) + self._tail
        return sql

    def run(self, cursor: Any, rows: Sequence[Sequence[Any]]) -> int:
        """Insert ``rows``; return how many rows were inserted (``changes()``)."""
        inserted = 0
        pos, n = 0, len(rows)
        while pos < n:
            left = n - pos
            size = self.chunk if left >= self.chunk else 1 << (left.bit_length() - 1)
            params = [value for row in rows[pos:pos + size] for value in row]
            cursor.execute(self.sql(size), params)
            inserted += max(cursor.rowcount, 0)
            pos += size
        return inserted
