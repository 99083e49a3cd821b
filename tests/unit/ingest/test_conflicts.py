"""A stored id arriving again: the same body is a duplicate (dropped), another body is a conflict
(a dead letter with the refused event); the check costs no query when no id repeats."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgspec
import pytest

from sidecar.config import DatabaseConfig, WriterConfig
from sidecar.core.events import EventRow, now_ms
from sidecar.core.stats import Stats
from sidecar.ingest.conflicts import find_conflicts, refused_event_json, same_body
from sidecar.ingest.decode import decode_message
from sidecar.ingest.writer import Delivery, Writer
from sidecar.storage import dialect as dialects
from sidecar.storage.db import migrate, open_database
from sidecar.storage.startup import open_store
from tests.support.stores import Store


@pytest.fixture
def db(any_store: Store):
    """The store on each engine (the writer's tests here run on SQLite and PostgreSQL)."""
    database = open_store(any_store.config, schema="migrate", shared=True)
    yield database
    database.close()


def row(body: dict, *, topic: str = "kairo/test/c", msgpack: bool = False) -> EventRow:
    data = msgspec.msgpack.encode(body) if msgpack else json.dumps(body).encode()
    return decode_message(topic, data, received_at=now_ms(), max_payload_bytes=100_000)


def writer(db) -> tuple[Writer, list, Stats]:
    acks: list = []
    stats = Stats()
    w = Writer(db, WriterConfig(), ack=acks.extend, window=1000, stats=stats)
    return w, acks, stats


def write(w: Writer, *rows: EventRow, first_mid: int = 1) -> None:
    """Write one batch synchronously (the writer thread's code, on the calling thread)."""
    batch = [Delivery(r, qos=1, mid=first_mid + i, generation=1) for i, r in enumerate(rows)]
    w._write(batch)
    w._release(batch)


def dead_letters(db) -> list[tuple]:
    return db.execute_sql("SELECT topic, payload, payload_size, reason FROM dead_letters "
                          "ORDER BY id").fetchall()


EVENT = {"id": "c-1", "type": "kairo.test.c", "source": "dev-1",
         "payload": {"temp": 21.5, "unit": "C"}, "metadata": {"timestamp": 1_700_000_000_000}}


def test_same_id_with_another_body_becomes_a_conflict_dead_letter(db):
    """A stored id with another payload becomes a conflict dead letter; the stored event stays.

    A second event with a stored id but another payload is a dead letter naming the seq; the stored
    event is unchanged and both messages are acked."""
    w, acks, stats = writer(db)
    write(w, row(EVENT))
    other = {**EVENT, "payload": {"temp": 99.0, "unit": "C"}}
    write(w, row(other, topic="kairo/test/c2"), first_mid=2)
    stored = db.execute_sql("SELECT seq, payload FROM events").fetchall()
    assert stored == [(1, json.dumps(EVENT["payload"]))]
    (topic, payload, size, reason), = dead_letters(db)
    assert topic == "kairo/test/c2"
    assert reason == "conflict: id 'c-1' is already stored (seq 1) with a different body"
    refused = json.loads(bytes(payload))
    assert refused["id"] == "c-1" and refused["payload"] == other["payload"]
    assert refused["metadata"] == other["metadata"] and size == len(bytes(payload))
    assert (stats.events_stored, stats.duplicates, stats.dead_letters) == (1, 0, 1)
    assert [mid for _, mid in acks] == [1, 2]


@pytest.mark.parametrize(
    ("copy", "kwargs"),
    [
        pytest.param(EVENT, {}, id="identical"),
        pytest.param(EVENT, {"msgpack": True}, id="msgpack-copy"),
        pytest.param(EVENT, {"topic": "kairo/other/topic"}, id="other-topic"),
        pytest.param({**EVENT, "payload": {"unit": "C", "temp": 21.5}}, {}, id="keys-reordered"),
    ],
)
def test_same_body_is_a_duplicate_not_a_conflict(db, copy: dict, kwargs: dict):
    """The same event again (as MessagePack, on another topic, keys reordered) is a duplicate."""
    w, _, stats = writer(db)
    write(w, row(EVENT))
    write(w, row(copy, **kwargs), first_mid=2)
    assert dead_letters(db) == []
    assert (stats.events_stored, stats.duplicates, stats.dead_letters) == (1, 1, 0)


def test_a_copy_with_numbers_beyond_a_float_is_a_duplicate(db):
    """A redelivery of an event holding 1e999 and a 30-digit integer is a duplicate, not a
    conflict (PostgreSQL returns the stored JSONB number exactly: 1 and 999 zeros)."""
    data = (b'{"id":"c-big","type":"kairo.test.c","source":"dev-1",'
            b'"payload":{"huge":1e999,"big":123456789012345678901234567890,"x":0.1}}')
    w, _, stats = writer(db)
    for mid in (1, 2):
        write(w, decode_message("kairo/test/c", data, received_at=now_ms(),
                                max_payload_bytes=100_000), first_mid=mid)
    assert dead_letters(db) == []
    assert (stats.events_stored, stats.duplicates, stats.dead_letters) == (1, 1, 0)


@pytest.mark.parametrize("field", ["type", "source", "metadata"])
def test_other_type_source_or_metadata_is_a_conflict(db, field: str):
    """Type, source and metadata (with the event's timestamp) are part of the body."""
    w, _, stats = writer(db)
    write(w, row(EVENT))
    changed = {"type": "kairo.test.other", "source": "dev-2",
               "metadata": {"timestamp": 1_700_000_000_001}}[field]
    write(w, row({**EVENT, field: changed}), first_mid=2)
    assert len(dead_letters(db)) == 1 and stats.dead_letters == 1 and stats.duplicates == 0


def test_two_bodies_for_one_id_in_one_batch(db):
    """In one batch, the first copy of an id is stored and a different second copy refused."""
    w, _, stats = writer(db)
    second = {**EVENT, "payload": {"temp": 0}}
    write(w, row(EVENT), row(EVENT), row(second))
    assert db.execute_sql("SELECT count(*) FROM events").fetchone()[0] == 1
    assert [r[3].startswith("conflict:") for r in dead_letters(db)] == [True]
    assert (stats.events_stored, stats.duplicates, stats.dead_letters) == (1, 1, 1)


def reads_of_events(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("SELECT") and "events" in s
            and "delivery_ids" not in s]


def test_one_key_lookup_when_every_id_is_new(db):
    """A batch of new ids costs one lookup in event_keys; the conflict check reads only when
    an id was left out (a second lookup, for the stored bodies)."""
    if not dialects.of(db).fts_keys:
        pytest.skip("counts SQLite's statements (set_trace_callback) on event_keys")
    w, _, _ = writer(db)
    statements: list[str] = []
    db.connection().set_trace_callback(statements.append)
    try:
        write(w, *(row({**EVENT, "id": f"new-{i}"}) for i in range(50)))
        reads = reads_of_events(statements)
        assert len(reads) == 1 and "event_keys MATCH" in reads[0], statements
        statements.clear()
        write(w, row({**EVENT, "id": "new-3"}), row({**EVENT, "id": "new-51"}), first_mid=60)
        reads = reads_of_events(statements)
        assert len(reads) == 2 and all("event_keys MATCH" in r for r in reads), statements
    finally:
        db.connection().set_trace_callback(None)


def test_find_conflicts_reads_in_chunks(tmp_path: Path):
    """More than 500 repeated ids (a big redelivery) are compared in several queries."""
    migrated = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'x.db'}"))
    migrate(migrated)
    migrated.close()
    con = sqlite3.connect(tmp_path / "x.db")
    rows = [row({**EVENT, "id": f"r-{i}"}) for i in range(1200)]
    con.executemany(f"INSERT INTO events ({', '.join(EventRow._fields)}) "
                    f"VALUES ({', '.join('?' * len(EventRow._fields))})", rows)
    changed = [r._replace(payload='{"x":1}') if i % 400 == 0 else r for i, r in enumerate(rows)]
    statements: list[str] = []
    con.set_trace_callback(statements.append)
    dead = find_conflicts(con.cursor(), changed)
    assert [d.reason.split("'")[1] for d in dead] == ["r-0", "r-400", "r-800"]
    assert len(reads_of_events(statements)) == 3  # 500 ids per lookup


def test_body_comparison_and_refused_event_json():
    """Bodies compare as JSON values; the refused event keeps payload and metadata verbatim."""
    r = row(EVENT)
    assert same_body(r, (1, r.type, r.source, '{"unit":"C","temp":21.5}', r.metadata))
    assert not same_body(r, (1, r.type, r.source, "not json", r.metadata))
    text = refused_event_json(r._replace(id="\u00e9"))
    assert json.loads(text) == {"id": "\u00e9", "type": r.type, "source": r.source,
                                "payload": EVENT["payload"], "metadata": EVENT["metadata"]}
