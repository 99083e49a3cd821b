"""Commit order on PostgreSQL: writers inserting events at the same time (several sidecars,
``import``, kv writes) must not let a reader paging by ``seq`` pass an event that commits late
with a lower ``seq`` (``Dialect.order_commits``, an advisory lock held to COMMIT)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import peewee
import pytest

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig
from sidecar.core.events import EventRow, now_ms, uuid7
from sidecar.ingest.writer import EventInsert
from sidecar.storage import dialect as dialects
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader
from sidecar.storage.startup import open_store
from tests.conftest import wait_until
from tests.support.postgres import Postgres


@pytest.fixture
def pg_url(pg_server: Postgres) -> Iterator[str]:
    url = pg_server.fresh_database()
    db = open_store(DatabaseConfig(url=url), schema="migrate")  # binds the models (the SQL)
    try:
        yield url
    finally:
        db.close()
        pg_server.drop_database(url)


def _row(n: int) -> EventRow:
    at = now_ms()
    # a type of its own: the event_types trigger would otherwise serialise the two inserts
    return EventRow(uuid7(), f"kairo/order/{n}", f"order.test{n}", "test", f'{{"n": {n}}}', "{}",
                    at, at, None, None, None)


def _connect(url: str) -> Any:
    import psycopg2

    return psycopg2.connect(url)


def _waiting_on_lock(url: str, pid: int) -> bool:
    con = _connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
            found = cur.fetchone()
        return found is not None and found[0] == "Lock"
    finally:
        con.close()


def test_reader_paging_by_seq_never_skips_an_event_committed_late(pg_url: str) -> None:
    """A transaction holds a lower seq open while a second one inserts: the reader pages by seq
    meanwhile, then again after both commit, and has seen both events (without the commit-order
    lock the second commits first, the reader's cursor passes the first, and it is skipped)."""
    insert = EventInsert(dialects.POSTGRES)
    early, late = _row(1), _row(2)
    first, second = _connect(pg_url), _connect(pg_url)
    second_pid = second.get_backend_pid()
    reader = Reader(open_reader(DatabaseConfig(url=pg_url)))
    everything = conditions(QueryRequest())
    failed: list[BaseException] = []

    def insert_second() -> None:
        try:
            with second, second.cursor() as cur:
                insert.run(cur, [late])
        except BaseException as exc:  # reported by the test below
            failed.append(exc)

    try:
        with first.cursor() as cur:
            insert.run(cur, [early])  # draws the lower seq; its transaction stays open
        thread = threading.Thread(target=insert_second)
        thread.start()
        wait_until(lambda: not thread.is_alive() or _waiting_on_lock(pg_url, second_pid),
                   timeout=10, message="the second insert committed or waiting on the lock")
        seen = [e.id for e in reader.page(everything, limit=100)]
        cursor = None
        if seen:
            cursor = reader.page(everything, limit=100)[-1].seq
        first.commit()
        thread.join(10)
        assert not thread.is_alive() and not failed, failed
        seen += [e.id for e in reader.page(everything, limit=100, after=cursor)]
        assert sorted(seen) == sorted([early.id, late.id])
        stored = [e.id for e in reader.page(everything, limit=100)]
        assert stored == [early.id, late.id]  # seq order is commit order
    finally:
        first.close()
        second.close()
        reader.db.close()


def test_order_commits_is_a_no_op_on_sqlite(tmp_path: Any) -> None:
    """SQLite has one writer at a time: ``order_commits`` issues nothing there."""
    db = peewee.SqliteDatabase(str(tmp_path / "x.db"))
    cursor = db.cursor()
    dialects.SQLITE.order_commits(cursor)
    assert cursor.fetchall() == []
    db.close()


def test_two_writers_never_both_win_a_kv_compare_and_set(pg_url: str) -> None:
    """Two sidecars' kv puts ``if_version=0`` on one key at once: the second waits for the
    first's COMMIT, then sees the key and answers ``conflict`` (without the lock it read no
    key, waited on the row, and overwrote the first: both won)."""
    from sidecar.core.kv import KvWrite
    from sidecar.errors import RequestError
    from sidecar.storage import kv as kv_store
    from sidecar.storage.postgres import open_postgres

    first = open_postgres(DatabaseConfig(url=pg_url))
    second = open_postgres(DatabaseConfig(url=pg_url))
    pids: list[int] = []  # Peewee's connections are per thread: the thread's own
    outcome: list[object] = []

    def put_second() -> None:
        pids.append(second.connection().get_backend_pid())
        try:
            with second.atomic():
                outcome.append(kv_store.apply(second, KvWrite(op="put", key="k", value="2",
                                                              if_version=0), topic_base="t"))
        except RequestError as exc:
            outcome.append(exc.code)

    try:
        with first.atomic():
            kv_store.apply(first, KvWrite(op="put", key="k", value="1", if_version=0),
                           topic_base="t")
            thread = threading.Thread(target=put_second)
            thread.start()
            wait_until(lambda: not thread.is_alive() or (
                bool(pids) and _waiting_on_lock(pg_url, pids[0])),
                timeout=10, message="the second put done or waiting")
        thread.join(10)
        assert outcome == ["conflict"]
        entry = kv_store.get(first, "k")
        assert entry is not None and (entry.value, entry.version) == ("1", 1)
    finally:
        first.close()
        second.close()
