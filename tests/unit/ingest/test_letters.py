"""Dead letters (sidecar.letters): list, show and re-ingest, on a real SQLite file whose dead
letters were written by the real decoder and writer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest
from peewee_migrate import Router

from sidecar.config import DatabaseConfig
from sidecar.core.events import now_ms
from sidecar.errors import FilterError, PayloadError, RequestError
from sidecar.ingest import letters
from sidecar.ingest.decode import dead_letter, decode_message
from sidecar.ingest.writer import Delivery
from sidecar.storage.db import MIGRATIONS_DIR, migrate, open_database
from sidecar.storage.reads import open_reader
from tests.conftest import wait_until
from tests.unit.ingest.test_writer import make_writer

SMALL = 200  # max_payload_bytes the "broken" configuration had
BIG = 100_000  # the fixed configuration


def envelope(event_id: str | None, text: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {"type": "kairo.test.msg", "source": "dev",
                            "payload": {"text": text}, **extra}
    if event_id is not None:
        body["id"] = event_id
    return json.dumps(body).encode()


def store(db: peewee.Database, messages: list[tuple[str, bytes]], *, max_payload: int = SMALL,
          keep: int = 65536, props: dict[str, Any] | None = None) -> None:
    """Ingest ``messages`` as the daemon does: decode, dead letter on refusal, the Writer."""
    writer, acks, _ = make_writer(db)
    writer.start()
    for mid, (topic, data) in enumerate(messages, 1):
        received = now_ms()
        try:
            row: Any = decode_message(topic, data, received_at=received,
                                      max_payload_bytes=max_payload, **(props or {}))
        except PayloadError as exc:
            row = dead_letter(topic, data, exc.reason, received_at=received, max_bytes=keep,
                              **(props or {}))
        writer.submit(Delivery(row, 1, mid))
    wait_until(lambda: len(acks.tokens) == len(messages), message="all acked")
    assert writer.stop(5)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[peewee.SqliteDatabase]:
    database = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'l.db'}",
                                            busy_timeout_ms=50))
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def reader(db: peewee.SqliteDatabase) -> Iterator[peewee.SqliteDatabase]:
    r = open_reader(DatabaseConfig(), path=db.database)
    yield r
    r.close()


def count(db: peewee.Database, table: str = "events") -> int:
    return int(db.execute_sql(f"SELECT count(*) FROM {table}").fetchone()[0])


def dead_ids(db: peewee.Database) -> list[int]:
    return [r[0] for r in db.execute_sql("SELECT id FROM dead_letters ORDER BY id")]


def reingest(db: peewee.Database, ids: list[int], max_payload: int = BIG) -> list[letters.Outcome]:
    return list(letters.reingest(db, ids, max_payload_bytes=max_payload))


def test_oversize_dead_letter_reingested_twice_is_one_event(db):
    """A payload refused as too large is stored once the limit allows it; twice -> one row."""
    data = envelope("big-1", "x" * 500)
    store(db, [("kairo/test/msg", data)])
    (letter_id,) = dead_ids(db)
    first = reingest(db, [letter_id])
    assert [(o.result, o.event_id) for o in first] == [("stored", "big-1")]
    second = reingest(db, [letter_id])
    assert second[0].result == "not_found" and not second[0].done
    assert count(db) == 1 and count(db, "dead_letters") == 0
    stored = db.execute_sql("SELECT seq, type, source, payload FROM events").fetchone()
    expected = decode_message("kairo/test/msg", data, received_at=0, max_payload_bytes=BIG)
    assert stored == (first[0].seq, expected.type, expected.source, expected.payload)


def test_idless_dead_letter_reingested_twice_is_one_event(db):
    """An id-less event gets a fresh id once; re-ingesting again (and the same id list twice in
    one run) never makes a second row."""
    store(db, [("kairo/test/msg", json.dumps({"reading": "y" * 500}).encode())])
    (letter_id,) = dead_ids(db)
    outcomes = reingest(db, [letter_id, letter_id]) + reingest(db, [letter_id])
    assert [o.result for o in outcomes] == ["stored", "not_found", "not_found"]
    assert count(db) == 1 and count(db, "dead_letters") == 0


def test_still_malformed_dead_letter_stays_with_the_new_reason(db):
    """A dead letter that still fails to decode stays as it was; the new reason is reported."""
    store(db, [("kairo/test/msg", b'{"id": "m1", "payload": ')])
    (letter_id,) = dead_ids(db)
    before = db.execute_sql("SELECT * FROM dead_letters").fetchall()
    (outcome,) = reingest(db, [letter_id])
    assert outcome.result == "failed" and "malformed JSON" in (outcome.reason or "")
    assert db.execute_sql("SELECT * FROM dead_letters").fetchall() == before
    assert count(db) == 0


def test_oversize_still_over_the_configured_limit_fails(db):
    """Re-ingest applies the configured max_payload_bytes, as live ingest does."""
    store(db, [("kairo/test/msg", envelope("big-2", "x" * 500))])
    (outcome,) = reingest(db, dead_ids(db), max_payload=SMALL)
    assert outcome.result == "failed" and "max_payload_bytes" in (outcome.reason or "")
    assert count(db, "dead_letters") == 1 and count(db) == 0


def test_truncated_dead_letter_is_never_reingested(db):
    """Bytes capped by dead_letter_max_bytes cannot be decoded: reported, left in place."""
    store(db, [("kairo/test/msg", envelope("cut-1", "x" * 500))], keep=100)
    (outcome,) = reingest(db, dead_ids(db))
    assert outcome.result == "truncated" and "100 of its" in (outcome.reason or "")
    assert count(db, "dead_letters") == 1 and count(db) == 0


def test_event_already_stored_only_loses_its_dead_letter(db):
    """The same event stored meanwhile (a publisher's retry): no new row, dead letter gone."""
    data = envelope("dup-1", "x" * 500)
    store(db, [("kairo/test/msg", data)])
    store(db, [("kairo/test/msg", data)], max_payload=BIG)
    (outcome,) = reingest(db, dead_ids(db))
    assert outcome.result == "already_stored" and outcome.done
    assert count(db) == 1 and count(db, "dead_letters") == 0


def test_id_stored_with_another_body_stays_a_dead_letter(db):
    """A conflict is not stored: the dead letter stays, the conflict reason is reported, and no
    second dead letter appears."""
    store(db, [("kairo/test/msg", envelope("c-1", "x" * 500))])
    store(db, [("kairo/test/msg", envelope("c-1", "other"))], max_payload=BIG)
    (outcome,) = reingest(db, dead_ids(db))
    assert outcome.result == "failed" and (outcome.reason or "").startswith("conflict:")
    assert count(db, "dead_letters") == 1 and count(db) == 1


def test_binary_cloudevent_is_decoded_with_its_stored_properties(db, reader):
    """Content type and user properties are kept with the dead letter and used again: a binary
    CloudEvent comes back with the type and id from its properties."""
    props = {"content_type": "application/json",
             "user_properties": [("specversion", "1.0"), ("id", "ce-1"), ("type", "kairo.ce"),
                                 ("source", "sensor")]}
    store(db, [("kairo/ce/x", json.dumps({"v": "z" * 500}).encode())], props=props)
    (letter_id,) = dead_ids(db)
    shown = letters.get(reader, letter_id)
    assert shown.content_type == "application/json"
    assert shown.user_properties == props["user_properties"]
    (outcome,) = reingest(db, [letter_id])
    assert outcome.result == "stored" and outcome.event_id == "ce-1"
    assert db.execute_sql("SELECT type, source FROM events").fetchone() == ("kairo.ce", "sensor")


def test_list_is_newest_first_keyset_paged_and_filtered(db, reader):
    """Pages walk every match once, newest first; topic (MQTT filter), reason (any case) and
    since narrow it."""
    store(db, [(f"kairo/room{i % 2}/t", b'{"a": ' if i % 3 else b"[1]") for i in range(7)])
    ids = dead_ids(db)
    seen: list[int] = []
    after = None
    while True:
        page, after = letters.page(reader, letters.LetterFilter(), limit=3, after=after)
        seen += [x.id for x in page]
        if after is None:
            break
    assert seen == ids[::-1]
    room1 = letters.LetterFilter(topic="kairo/+/t", reason="NOT A JSON OBJECT")
    found, _ = letters.page(reader, room1, limit=10)
    assert [x.id for x in found] == [ids[i] for i in (6, 3, 0)]
    found, _ = letters.page(reader, letters.LetterFilter(topic="kairo/room1/#"), limit=10)
    assert [x.topic for x in found] == ["kairo/room1/t"] * 3
    found, _ = letters.page(reader, letters.LetterFilter(since=now_ms() + 60_000), limit=10)
    assert found == []
    with pytest.raises(FilterError) as info:
        letters.page(reader, letters.LetterFilter(topic="a/#/b"), limit=10)
    assert info.value.field == "topic"


def test_show_gives_text_or_base64_and_the_truncation(db, reader):
    """UTF-8 bytes are shown as text, other bytes as base64; a capped one is marked."""
    store(db, [("kairo/t/a", "{\"é\": ".encode()), ("kairo/t/b", b"\xc3\x28\x00\xff"),
               ("kairo/t/c", envelope("cut", "x" * 500))], keep=100)
    text, binary, cut = (letters.get(reader, i) for i in dead_ids(db))
    assert (text.encoding, text.payload, text.truncated) == ("utf-8", "{\"é\": ", False)
    assert binary.encoding == "base64"
    assert base64.b64decode(binary.payload) == b"\xc3\x28\x00\xff"
    assert cut.truncated and cut.stored_bytes == 100 and cut.size > 500
    with pytest.raises(RequestError) as info:
        letters.get(reader, 999_999)
    assert info.value.code == "not_found"


def test_dead_letters_from_before_migration_003_are_read_and_reingested(tmp_path):
    """A file still at migration 002 (no property columns) is listed and shown; migrating it
    keeps its dead letters, with no properties, and they re-ingest."""
    database = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'old.db'}"))
    Router(database, migrate_dir=MIGRATIONS_DIR).run("002_events_type_seq")
    database.execute_sql("INSERT INTO dead_letters (topic, payload, payload_size, reason, "
                         "received_at) VALUES (?, ?, ?, ?, ?)",
                         ("kairo/old/x", b'{"id": "old-1", "payload": {}}', 30, "too large", 1))
    old = open_reader(DatabaseConfig(), path=database.database)
    try:
        shown = letters.get(old, 1)
        assert shown.content_type is None and shown.user_properties is None
        assert [x.id for x in letters.page(old, letters.LetterFilter(), limit=5)[0]] == [1]
    finally:
        old.close()
    database.execute_sql("INSERT INTO dead_letters (topic, payload, payload_size, reason, "
                         "received_at) VALUES ('t', x'00', 1, 'r', 2)")
    assert migrate(database) == ["003_dead_letter_properties", "004_event_keys", "005_event_types",
                                 "006_kv_versions", "007_kv_projected_seq", "009_deferred_keys",
                                 "010_keys_automerge",
                                 "011_event_search",
                                 "012_kv_key_byte_order", "013_search_automerge"]
    assert database.execute_sql("SELECT topic, content_type, user_properties FROM "
                                "dead_letters ORDER BY id").fetchall() == [
        ("kairo/old/x", None, None), ("t", None, None)]
    assert reingest(database, [1])[0].event_id == "old-1"
    assert database.execute_sql("SELECT topic, content_type, user_properties FROM "
                                "dead_letters").fetchall() == [("t", None, None)]
    database.close()
