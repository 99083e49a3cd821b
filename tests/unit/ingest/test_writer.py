"""Tests of the batch writer against a real SQLite file (no broker: acks go to a recorder)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sidecar.config import DatabaseConfig, WriterConfig
from sidecar.core.events import EventRow, now_ms
from sidecar.core.stats import Stats
from sidecar.ingest.decode import dead_letter, decode_message
from sidecar.ingest.writer import Delivery, EventInsert, Writer
from sidecar.storage.db import migrate, open_database
from tests.conftest import wait_until


class AckRecorder:
    def __init__(self) -> None:
        self.tokens: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, tokens):
        with self.lock:
            self.tokens.extend(tokens)


def _row(i: int, *, id: str | None = "auto", payload: str = '{"i": 0}') -> EventRow:
    event_id = f"evt-{i}" if id == "auto" else id
    text = f'{{"payload": {payload}}}' if id is None else f'{{"id": "{event_id}", "payload": {payload}}}'
    data = text.encode()
    return decode_message("kairo/test/x", data, received_at=now_ms(), max_payload_bytes=10_000)


@pytest.fixture
def db(tmp_path: Path):
    database = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'w.db'}",
                                            busy_timeout_ms=50))
    migrate(database)
    yield database
    database.close()


def make_writer(db, *, batch_size=100, flush_interval=0.05, window=10_000, queue_size=1000):
    acks = AckRecorder()
    stats = Stats()
    writer = Writer(db, WriterConfig(batch_size=batch_size, flush_interval=flush_interval,
                                     queue_size=queue_size, retry_max_delay=0.2),
                    ack=acks, window=window, stats=stats)
    return writer, acks, stats


def rows(db, sql="SELECT count(*) FROM events"):
    return db.execute_sql(sql).fetchall()


def test_batch_is_stored_and_acked_in_receive_order(db):
    """Every event is stored once and every QoS 1 ack is released, in the order received."""
    writer, acks, stats = make_writer(db, batch_size=7)
    writer.start()
    for i in range(50):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: len(acks.tokens) == 50, message="50 acks")
    assert acks.tokens == [(1, i + 1) for i in range(50)]
    assert rows(db)[0][0] == 50
    assert stats.events_stored == 50 and stats.batches >= 8
    assert writer.stop(5)


def test_redelivered_event_is_not_stored_twice(db):
    """The same event id arriving again (a redelivery) adds no row and is still acked."""
    writer, acks, stats = make_writer(db)
    writer.start()
    writer.submit(Delivery(_row(1), qos=1, mid=1, generation=1))
    wait_until(lambda: len(acks.tokens) == 1)
    writer.submit(Delivery(_row(1), qos=1, mid=1, generation=2, dup=True))
    wait_until(lambda: len(acks.tokens) == 2)
    assert rows(db)[0][0] == 1
    assert stats.duplicates == 1
    writer.stop(5)


def test_idless_redelivery_gets_the_same_generated_id(db):
    """An id-less message re-sent with DUP and the same packet id reuses its generated id."""
    writer, acks, _ = make_writer(db)
    writer.start()
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 21.5}'), qos=1, mid=7, generation=1))
    wait_until(lambda: len(acks.tokens) == 1)
    # the broker re-sends it after a reconnect: same packet id, DUP set
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 21.5}'), qos=1, mid=7, generation=2,
                           dup=True))
    wait_until(lambda: len(acks.tokens) == 2)
    assert rows(db)[0][0] == 1
    writer.stop(5)


def test_idless_identical_messages_without_dup_are_distinct_events(db):
    """Two identical id-less readings (not redeliveries) are two events with distinct ids."""
    writer, acks, _ = make_writer(db)
    writer.start()
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 21.5}'), qos=1, mid=7, generation=1))
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 21.5}'), qos=1, mid=8, generation=1))
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 21.5}'), qos=0, generation=1))
    wait_until(lambda: len(acks.tokens) == 2)
    wait_until(lambda: rows(db)[0][0] == 3)
    ids = [r[0] for r in rows(db, "SELECT id FROM events")]
    assert len(set(ids)) == 3
    writer.stop(5)


def test_idless_dup_with_other_content_is_a_new_event(db):
    """A DUP message whose packet id matches but whose content differs is stored, not dropped."""
    writer, acks, _ = make_writer(db)
    writer.start()
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 1}'), qos=1, mid=9, generation=1))
    wait_until(lambda: len(acks.tokens) == 1)
    writer.submit(Delivery(_row(0, id=None, payload='{"t": 2}'), qos=1, mid=9, generation=2,
                           dup=True))
    wait_until(lambda: len(acks.tokens) == 2)
    assert rows(db)[0][0] == 2
    writer.stop(5)


def test_dead_letters_share_the_transaction_and_are_acked(db):
    """Dead letters are written in the batch's transaction and their messages acked."""
    writer, acks, stats = make_writer(db)
    writer.start()
    bad = dead_letter("kairo/x", b"\xff" * 100, "not JSON", received_at=now_ms(), max_bytes=10)
    writer.submit(Delivery(bad, qos=1, mid=1, generation=1))
    writer.submit(Delivery(_row(1), qos=1, mid=2, generation=1))
    wait_until(lambda: len(acks.tokens) == 2)
    (topic, payload, size, reason), = rows(
        db, "SELECT topic, payload, payload_size, reason FROM dead_letters")
    assert (topic, bytes(payload), size, reason) == ("kairo/x", b"\xff" * 10, 100, "not JSON")
    assert stats.dead_letters == 1 and rows(db)[0][0] == 1
    writer.stop(5)


def test_locked_database_delays_acks_until_commit(db, tmp_path):
    """While another process holds the write lock nothing is acked; afterwards all is stored."""
    writer, acks, stats = make_writer(db)
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    writer.start()
    for i in range(20):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: stats.write_errors >= 2, message="write retries")
    assert acks.tokens == []
    other.execute("ROLLBACK")
    other.close()
    wait_until(lambda: len(acks.tokens) == 20)
    assert rows(db)[0][0] == 20
    writer.stop(5)


def test_stop_gives_up_at_deadline_without_acking(db, tmp_path):
    """At shutdown a still-failing database is abandoned after the deadline, nothing acked."""
    writer, acks, _ = make_writer(db)
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    writer.start()
    writer.submit(Delivery(_row(1), qos=1, mid=1, generation=1))
    assert writer.stop(0.5) is False
    assert acks.tokens == []
    other.execute("ROLLBACK")
    other.close()


def test_window_full_flushes_before_interval(db):
    """When the broker's in-flight window is full the batch is written at once, not after
    flush_interval (the broker sends nothing more until it gets acks)."""
    writer, acks, _ = make_writer(db, batch_size=500, flush_interval=30, window=20)
    writer.start()
    for i in range(20):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: len(acks.tokens) == 20, timeout=10,
               message="acks well before the 30 s flush interval")
    writer.stop(5)


def test_qos0_dropped_when_queue_full_qos1_never(db):
    """A full queue drops QoS 0 deliveries (counted) but always takes QoS 1."""
    writer, _, stats = make_writer(db, queue_size=5)
    for i in range(5):
        assert writer.submit(Delivery(_row(i), qos=0))
    assert writer.submit(Delivery(_row(99), qos=0)) is False
    assert writer.submit(Delivery(_row(100), qos=1, mid=1, generation=1)) is True
    assert stats.qos0_dropped == 1
    writer.start()
    wait_until(lambda: rows(db)[0][0] == 6)
    writer.stop(5)


def test_sequence_is_never_reused_after_delete(db):
    """seq keeps growing after the newest rows are deleted (it is the replay cursor)."""
    writer, acks, _ = make_writer(db)
    writer.start()
    for i in range(3):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: len(acks.tokens) == 3)
    db.execute_sql("DELETE FROM events")
    writer.submit(Delivery(_row(10), qos=1, mid=4, generation=1))
    wait_until(lambda: len(acks.tokens) == 4)
    assert rows(db, "SELECT seq FROM events")[0][0] == 4
    writer.stop(5)


def test_event_the_database_refuses_becomes_a_dead_letter(db):
    """An event SQLite refuses for its content (here: a string too big for the column limit)
    becomes a dead letter; the rest of its batch is stored and everything is acked."""
    writer, acks, _ = make_writer(db, batch_size=3, flush_interval=5)
    writer.start()
    good = [_row(i) for i in range(2)]
    # a lone surrogate cannot be encoded for SQLite: the driver raises UnicodeEncodeError
    poison = _row(7)._replace(payload='"\ud800"')
    writer.submit(Delivery(good[0], qos=1, mid=1, generation=1))
    writer.submit(Delivery(poison, qos=1, mid=2, generation=1))
    writer.submit(Delivery(good[1], qos=1, mid=3, generation=1))
    wait_until(lambda: len(acks.tokens) == 3, message="all three acked")
    assert rows(db)[0][0] == 2
    (reason,), = rows(db, "SELECT reason FROM dead_letters")
    assert "storage refused the event" in reason
    assert writer.stop(5)


def test_packet_id_reused_by_a_fresh_message_forgets_the_old_record(db):
    """A fresh (not DUP) message reusing a packet id makes the old record obsolete, so a DUP
    copy of an identical id-less event after that is not merged with the earlier one."""
    writer, acks, _ = make_writer(db)
    writer.start()
    reading = '{"t": 21.5}'
    writer.submit(Delivery(_row(0, id=None, payload=reading), qos=1, mid=5, generation=1))
    wait_until(lambda: len(acks.tokens) == 1)
    # packet id 5 comes back (wrap-around) carrying an enveloped event: the broker got our ack
    writer.submit(Delivery(_row(1), qos=1, mid=5, generation=1))
    wait_until(lambda: len(acks.tokens) == 2)
    assert rows(db, "SELECT count(*) FROM delivery_ids")[0][0] == 0
    # an identical reading, delivered with DUP under packet id 5, is a new event
    writer.submit(Delivery(_row(0, id=None, payload=reading), qos=1, mid=5, generation=2,
                           dup=True))
    wait_until(lambda: len(acks.tokens) == 3)
    assert rows(db)[0][0] == 3
    writer.stop(5)


def test_session_reset_forgets_records_before_the_callback(db):
    """session_reset writes what was queued before it, deletes the packet-id records, and only
    then calls back (the subscriber subscribes there)."""
    writer, acks, _ = make_writer(db)
    seen: list[int] = []
    writer.start()
    writer.submit(Delivery(_row(0, id=None), qos=1, mid=3, generation=1))
    writer.session_reset(then=lambda: seen.append(
        rows(db, "SELECT count(*) FROM delivery_ids")[0][0]))
    wait_until(lambda: seen, message="reset callback")
    assert seen == [0] and acks.tokens == [(1, 3)]
    assert rows(db)[0][0] == 1
    assert writer.alive
    writer.stop(5)


def test_a_task_ends_the_batch_and_runs_between_batches(db):
    """A session reset queued between two deliveries runs after the first is committed and
    before the second is written (a task ends the batch being collected)."""
    writer, acks, _ = make_writer(db, flush_interval=1.0)
    seen: list[int] = []
    writer.submit(Delivery(_row(0), qos=1, mid=1, generation=1))
    writer.session_reset(then=lambda: seen.append(rows(db)[0][0]))
    writer.submit(Delivery(_row(1), qos=1, mid=2, generation=1))
    writer.start()
    wait_until(lambda: len(acks.tokens) == 2, message="both acks")
    assert seen == [1] and acks.tokens == [(1, 1), (1, 2)]
    assert rows(db)[0][0] == 2
    writer.stop(5)


def _keys_state(db) -> tuple[int, int]:
    """(the event_keys watermark, max(seq))."""
    return rows(db, "SELECT indexed_upto, (SELECT coalesce(max(seq), 0) FROM events) "
                    "FROM event_keys_state")[0]


def test_redelivery_of_an_event_still_in_the_tail_is_not_stored_twice(db):
    """An event not yet indexed in event_keys (the tail) is still found by the dedupe: its
    redelivery adds no row."""
    writer, acks, stats = make_writer(db, batch_size=5)
    writer.start()
    for i in range(20):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: len(acks.tokens) == 20)
    assert _keys_state(db) == (0, 20)  # all in the tail (keys_batch: 1,000)
    for i in range(20):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=2, dup=True))
    wait_until(lambda: len(acks.tokens) == 40)
    assert rows(db)[0][0] == 20 and stats.duplicates == 20
    assert writer.stop(5)


def test_keys_are_indexed_in_steps_and_at_a_clean_stop(db):
    """The writer indexes event_keys once keys_batch events wait (in that batch's transaction)
    and the rest at a clean stop: the watermark reaches max(seq), FTS5 is consistent."""
    acks = AckRecorder()
    writer = Writer(db, WriterConfig(batch_size=7, flush_interval=0.05, queue_size=1000),
                    ack=acks, window=10_000, stats=Stats(), keys_batch=20)
    writer.start()
    for i in range(100):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: len(acks.tokens) == 100)
    indexed, top = _keys_state(db)
    assert top == 100 and 0 <= top - indexed < 20  # fewer than keys_batch wait
    assert writer.stop(5)
    assert _keys_state(db) == (100, 100)
    db.execute_sql("INSERT INTO event_keys (event_keys, rank) VALUES ('integrity-check', 0)")


def test_start_indexes_the_tail_a_crash_left(tmp_path: Path):
    """Events stored but not indexed when the process died (no clean stop) are indexed when
    the next writer starts, and their redeliveries then add no row."""
    path = tmp_path / "crash.db"
    first = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(first)
    with first.atomic("IMMEDIATE"):  # what the writer's batches commit, without a stop
        EventInsert().run(first.cursor(), [_row(i) for i in range(150)])
    assert _keys_state(first) == (0, 150)
    first.close()
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    writer, acks, stats = make_writer(db)
    writer.start()
    wait_until(lambda: _keys_state(db) == (150, 150), message="keys caught up at start")
    for i in range(150):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1, dup=True))
    wait_until(lambda: len(acks.tokens) == 150)
    assert rows(db)[0][0] == 150 and stats.duplicates == 150
    assert writer.stop(5)
    db.close()
