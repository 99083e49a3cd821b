"""Two members of a shared group writing one PostgreSQL database: each keeps its packet-id
records (for id-less events) in a range of its own, as both MQTT sessions number from 1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.config import DatabaseConfig, MQTTConfig, WriterConfig
from sidecar.core.events import EventRow, now_ms
from sidecar.core.stats import Stats
from sidecar.ingest.decode import decode_message
from sidecar.ingest.writer import Delivery, Writer, member_id_base
from sidecar.storage.startup import open_store
from tests.conftest import wait_until
from tests.support.postgres import Postgres


class _Acks:
    def __init__(self) -> None:
        self.tokens: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, tokens: Any) -> None:
        with self.lock:
            self.tokens.extend(tokens)


def _idless(reading: float) -> EventRow:
    return decode_message("kairo/test/x", f'{{"payload": {{"t": {reading}}}}}'.encode(),
                          received_at=now_ms(), max_payload_bytes=10_000)


@pytest.fixture
def pg_db(pg_server: Postgres) -> Iterator[Any]:
    url = pg_server.fresh_database()
    db = open_store(DatabaseConfig(url=url), schema="migrate")
    try:
        yield db
    finally:
        db.close()
        pg_server.drop_database(url)


def _member(db: Any, name: str) -> tuple[Writer, _Acks]:
    acks = _Acks()
    writer = Writer(db, WriterConfig(batch_size=10, flush_interval=0.02, retry_max_delay=0.2),
                    ack=acks, window=1000, stats=Stats(),
                    delivery_id_base=member_id_base(MQTTConfig(client_id=name,
                                                               shared_group="g")))
    writer.start()
    return writer, acks


def _count(db: Any) -> int:
    return int(db.execute_sql("SELECT count(*) FROM events").fetchone()[0])


def test_a_members_redelivery_finds_its_own_record_not_the_other_members(pg_db: Any) -> None:
    """Both members get an id-less message with packet id 5 (different readings); member A's
    broker then re-sends its copy (DUP): it gets the id A gave it, no second row, even after
    member B's session reset (which forgets B's records only)."""
    a, a_acks = _member(pg_db, "kairo-centre-1")
    b, b_acks = _member(pg_db, "kairo-centre-2")
    try:
        a.submit(Delivery(_idless(21.5), qos=1, mid=5, generation=1))
        wait_until(lambda: len(a_acks.tokens) == 1, message="A's first ack")
        b.submit(Delivery(_idless(19.0), qos=1, mid=5, generation=1))
        wait_until(lambda: len(b_acks.tokens) == 1, message="B's first ack")
        a.submit(Delivery(_idless(21.5), qos=1, mid=5, generation=2, dup=True))
        wait_until(lambda: len(a_acks.tokens) == 2, message="A's redelivery acked")
        assert _count(pg_db) == 2
        reset = threading.Event()
        b.session_reset(then=reset.set)
        assert reset.wait(10)
        a.submit(Delivery(_idless(21.5), qos=1, mid=5, generation=3, dup=True))
        wait_until(lambda: len(a_acks.tokens) == 3, message="A's second redelivery acked")
        assert _count(pg_db) == 2
    finally:
        a.stop(5)
        b.stop(5)
