"""The writer's group commit: acks wait for one sync covering every batch committed before it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sidecar.config import DatabaseConfig, WriterConfig
from sidecar.core.events import EventRow, now_ms
from sidecar.core.stats import Stats
from sidecar.ingest.decode import decode_message
from sidecar.ingest.writer import Delivery, Writer
from sidecar.storage.db import migrate, open_database
from tests.conftest import wait_until


class Journal:
    """Records, in one timeline, each sync (with the rows committed then) and each ack."""

    def __init__(self, db, fail: bool = False) -> None:
        self.db = db
        self.fail = fail
        self.timeline: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def sync(self) -> None:
        if self.fail:
            raise OSError(5, "Input/output error")
        committed = self.db.execute_sql("SELECT count(*) FROM events").fetchone()[0]
        with self.lock:
            self.timeline.append(("sync", committed))

    def ack(self, tokens) -> None:
        with self.lock:
            self.timeline.append(("ack", len(tokens)))

    def acked(self) -> int:
        with self.lock:
            return sum(n for kind, n in self.timeline if kind == "ack")

    def syncs(self) -> int:
        with self.lock:
            return sum(1 for kind, _ in self.timeline if kind == "sync")


def _row(i: int) -> EventRow:
    data = f'{{"id": "evt-{i}", "payload": {{"i": {i}}}}}'.encode()
    return decode_message("kairo/test/x", data, received_at=now_ms(), max_payload_bytes=10_000)


@pytest.fixture
def db(tmp_path: Path):
    database = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'g.db'}"))
    migrate(database)
    yield database
    database.close()


def _writer(db, journal: Journal, *, batch_size=10, window=10_000, sync_interval=0.3):
    return Writer(db, WriterConfig(batch_size=batch_size, flush_interval=0.02, queue_size=1000),
                  ack=journal.ack, window=window, stats=Stats(), sync=journal.sync,
                  sync_interval=sync_interval)


def test_every_ack_follows_a_sync_of_its_commit(db):
    """No ack is released before a sync that ran after its event was committed."""
    journal = Journal(db)
    writer = _writer(db, journal)
    writer.start()
    for i in range(200):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: journal.acked() == 200, message="200 acks")
    assert writer.stop(5)
    synced = acked = 0
    for kind, n in journal.timeline:
        if kind == "sync":
            synced = n
        else:
            acked += n
            assert acked <= synced, journal.timeline


def test_one_sync_covers_several_batches(db):
    """Batches committed within sync_interval share one sync (fewer syncs than commits)."""
    journal = Journal(db)
    writer = _writer(db, journal, batch_size=10, sync_interval=5.0)
    writer.start()
    for i in range(100):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    wait_until(lambda: writer.stats.events_stored == 100, message="100 stored")
    assert journal.acked() == 0  # committed and visible, not yet durable: not acked
    assert writer.stop(5)
    assert journal.acked() == 100 and journal.syncs() == 1 and writer.stats.batches >= 10


def test_half_the_window_syncs_without_waiting_for_the_interval(db):
    """Unsynced acks reaching half the broker's window are synced at once, so it never stalls."""
    journal = Journal(db)
    writer = _writer(db, journal, batch_size=5, window=20, sync_interval=60.0)
    writer.start()
    for i in range(40):
        writer.submit(Delivery(_row(i), qos=1, mid=i + 1, generation=1))
    # all but the last batch (less than half the window: it may wait for the interval)
    wait_until(lambda: journal.acked() >= 35, message="acks long before sync_interval")
    assert writer.stop(5)
    assert journal.acked() == 40


def test_the_interval_syncs_an_idle_writer(db):
    """A lone committed batch is synced and acked once sync_interval passes, with no more traffic."""
    journal = Journal(db)
    writer = _writer(db, journal, sync_interval=0.2)
    writer.start()
    writer.submit(Delivery(_row(1), qos=1, mid=1, generation=1))
    wait_until(lambda: journal.acked() == 1, message="the ack after sync_interval")
    assert journal.syncs() == 1
    assert writer.stop(5)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_sync_acks_nothing_and_stops_the_writer(db):
    """When the sync fails the acks are never sent (the broker keeps the messages)."""
    journal = Journal(db, fail=True)
    writer = _writer(db, journal, sync_interval=0.05)
    writer.start()
    writer.submit(Delivery(_row(1), qos=1, mid=1, generation=1))
    wait_until(lambda: not writer.alive, message="the writer to stop")
    assert journal.acked() == 0
    assert db.execute_sql("SELECT count(*) FROM events").fetchone()[0] == 1
