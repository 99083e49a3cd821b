"""sidecar.ingest.bulk: multi-row INSERTs in power-of-two chunks, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sidecar.ingest.bulk import MAX_CHUNK, BulkInsert

SQL = "INSERT OR IGNORE INTO t (k, v) VALUES (?, ?)"


@pytest.fixture
def db(tmp_path: Path):
    connection = sqlite3.connect(tmp_path / "bulk.db")
    connection.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    yield connection
    connection.close()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 255, 256, 257, 1000])
def test_every_row_is_inserted_once_in_order(db: sqlite3.Connection, n: int):
    """n rows of any count (not a power of two, above one chunk) are all inserted, in order."""
    bulk = BulkInsert(SQL, 2)
    rows = [(f"k{i:05d}", i) for i in range(n)]
    assert bulk.run(db.cursor(), rows) == n
    assert db.execute("SELECT k, v FROM t ORDER BY rowid").fetchall() == rows


def test_insert_or_ignore_counts_only_new_rows(db: sqlite3.Connection):
    """A batch that repeats stored keys reports only the rows really inserted."""
    bulk = BulkInsert(SQL, 2)
    bulk.run(db.cursor(), [("a", 1), ("b", 2)])
    assert bulk.run(db.cursor(), [("a", 9), ("c", 3), ("b", 9), ("d", 4)]) == 2
    assert db.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [("a", 1), ("b", 2), ("c", 3),
                                                                     ("d", 4)]


def test_chunk_fits_the_variable_limit():
    """The chunk is the largest power of two with rows x columns within SQLite's variable limit."""
    assert BulkInsert(SQL, 2, max_variables=999).chunk == MAX_CHUNK
    eleven = f"INSERT INTO e VALUES ({', '.join('?' * 11)})"
    assert BulkInsert(eleven, 11, max_variables=999).chunk == 64  # 11 x 64 = 704 <= 999 < 1408
    assert BulkInsert(eleven, 11, max_variables=100).chunk == 8
    assert BulkInsert(SQL, 2, max_variables=1).chunk == 1
    assert BulkInsert.for_sqlite(SQL, 2).chunk >= 1


def test_few_statements_per_batch(db: sqlite3.Connection):
    """1,000 rows go to SQLite in a handful of statements, not 1,000 calls (the point of bulk)."""
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    BulkInsert(SQL, 2).run(db.cursor(), [(f"k{i}", i) for i in range(1000)])
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) == 1000 // MAX_CHUNK + bin(1000 % MAX_CHUNK).count("1")


@pytest.mark.parametrize("sql", ["INSERT INTO t (k) VALUES (?)", "UPDATE t SET v = ?, k = ?",
                                 "INSERT INTO t (k, v) VALUES (?, ?, ?)"])
def test_refuses_what_is_not_a_one_row_insert(sql: str):
    """A statement that is not a one-row INSERT with that many parameters is a ValueError."""
    with pytest.raises(ValueError):
        BulkInsert(sql, 2)
