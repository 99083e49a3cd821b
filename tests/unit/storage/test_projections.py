"""Projections folded by the writer in its transaction, and rebuilt from the event log, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import pytest

from sidecar.config import WriterConfig
from sidecar.core.events import EventRow, now_ms
from sidecar.core.kv import KvWrite
from sidecar.core.projections import Projection
from sidecar.core.stats import Stats
from sidecar.ingest.decode import decode_message
from sidecar.ingest.writer import Delivery, Writer
from sidecar.storage import kv, projections
from sidecar.storage.startup import open_store
from tests.conftest import wait_until
from tests.support.stores import Store

RULES = [Projection("plugins", "kairo.plugin.state", "plugin/{payload.name}"),
         Projection("alerts", "kairo.alert.*", "alert/{payload.fingerprint}", mode="merge")]


def _event(i: int, event_type: str, payload: dict[str, object]) -> EventRow:
    text = json.dumps({"id": f"e-{i}", "type": event_type, "payload": payload})
    return decode_message("kairo/app/x", text.encode(), received_at=now_ms(),
                          max_payload_bytes=10_000)


@pytest.fixture
def db(any_store: Store):
    """The store on each engine, opened for writing (every test here runs on both)."""
    database = open_store(any_store.config, schema="migrate", shared=True)
    yield database
    database.close()


class _Acks:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, tokens: list[tuple[int, int]]) -> None:
        self.count += len(tokens)


def _writer(db, stats: Stats | None = None) -> tuple[Writer, _Acks]:
    acks = _Acks()
    writer = Writer(db, WriterConfig(batch_size=50, flush_interval=0.05), ack=acks,
                    window=10_000, stats=stats or Stats(),
                    projections=projections.Folder(RULES, max_value_bytes=200))
    writer.start()
    return writer, acks


def _push(writer: Writer, acks: _Acks, rows: list[EventRow], *, dup: bool = False) -> None:
    want = acks.count + len(rows)
    for i, row in enumerate(rows):
        writer.submit(Delivery(row, qos=1, mid=i + 1, generation=1, dup=dup))
    wait_until(lambda: acks.count >= want, message="acks")


def _store(db) -> list[tuple[object, ...]]:
    return db.execute_sql("SELECT key, value, version, updated_at, seq FROM kv_store "
                          "ORDER BY key").fetchall()


def _history() -> list[EventRow]:
    rows = []
    for i in range(40):
        rows.append(_event(i, "kairo.plugin.state", {"name": f"p{i % 4}", "enabled": i % 2 == 0,
                                                     "n": i}))
    rows.append(_event(100, "kairo.alert.raised", {"fingerprint": "f1", "raw": "x"}))
    rows.append(_event(101, "kairo.alert.analysed", {"fingerprint": "f1", "analysis": "y"}))
    rows.append(_event(102, "kairo.alert.raised", {"raw": "no fingerprint"}))
    rows.append(_event(103, "kairo.plugin.state", {"name": "big", "blob": "z" * 300}))
    rows.append(_event(104, "kairo.chat.message", {"name": "not projected"}))
    return rows


def test_writer_folds_new_events_once_in_seq_order(db) -> None:
    """Each plugin key holds its newest state event, marked with that event's seq; merge
    keeps the fields of both alert events; a redelivered batch changes no value or version;
    a missing placeholder or too large value is skipped and counted, the event still stored."""
    stats = Stats()
    writer, acks = _writer(db, stats)
    _push(writer, acks, _history())
    before = _store(db)
    _push(writer, acks, _history(), dup=True)  # every id stored already: nothing folds
    assert _store(db) == before
    writer.stop(5)
    seq_of = dict(db.execute_sql("SELECT id, seq FROM events").fetchall())
    plugins = {k: (json.loads(v), ver, seq) for k, v, ver, _, seq in before if k.startswith("plugin/")}
    assert sorted(plugins) == ["plugin/p0", "plugin/p1", "plugin/p2", "plugin/p3"]
    assert plugins["plugin/p3"] == ({"name": "p3", "enabled": False, "n": 39}, 10, seq_of["e-39"])
    alert = next(row for row in before if row[0] == "alert/f1")
    assert json.loads(alert[1]) == {"fingerprint": "f1", "raw": "x", "analysis": "y"}
    assert alert[2] == 2 and alert[4] == seq_of["e-101"]
    assert stats.projection_skipped == 2 and stats.events_stored == 45
    assert db.execute_sql(f"SELECT count(*) FROM events WHERE type LIKE {db.param}",
                          ("kairo.kv.%",)).fetchone() == (0,)  # a projected write: no kv event


def test_kv_put_after_a_projection_sees_its_version(db) -> None:
    """A kv/put with if_version reads the version projections made (one version sequence),
    and the put clears the row's projection seq."""
    writer, acks = _writer(db)
    _push(writer, acks, _history()[:8])  # p0..p3 twice each: version 2
    assert writer.kv(KvWrite(op="put", key="plugin/p0", value='"manual"', if_version=2)).version == 3
    writer.stop(5)
    assert kv.get(db, "plugin/p0").value == '"manual"'  # type: ignore[union-attr]
    assert db.execute_sql("SELECT seq FROM kv_store WHERE key = 'plugin/p0'").fetchone() == (None,)


def test_rebuild_gives_the_live_state_and_touches_only_its_prefix(db) -> None:
    """After the kv rows are deleted (and a stray key put under the prefix), a rebuild
    recomputes exactly the live state (values, versions, updated_at, seq) and leaves the
    keys of other prefixes alone."""
    writer, acks = _writer(db)
    _push(writer, acks, _history())
    writer.kv(KvWrite(op="put", key="other/k", value="1"))
    writer.stop(5)
    live = _store(db)
    db.execute_sql(f"DELETE FROM kv_store WHERE key LIKE {db.param}", ("plugin/%",))
    db.execute_sql("INSERT INTO kv_store (key, value, version, updated_at) VALUES "
                   "('plugin/stray', '1', 1, 1)")
    folder = projections.Folder(RULES, max_value_bytes=200)
    seen: list[int] = []
    report = projections.rebuild(db, folder, RULES[0], chunk=7,
                                 progress=lambda seq, top, n: seen.append(n))
    assert _store(db) == live
    assert report.keys == 4 and report.removed == 1 and report.events == 41
    assert len(seen) >= 5 and seen == sorted(seen)


def test_rebuild_beside_a_running_writer_misses_nothing(db) -> None:
    """Events the writer stores while a rebuild reads are folded too: the state after the
    rebuild is the newest event per plugin."""
    writer, acks = _writer(db)
    _push(writer, acks, _history()[:40])
    late = [_event(200 + i, "kairo.plugin.state", {"name": f"p{i}", "late": True})
            for i in range(2)]
    folder = projections.Folder(RULES, max_value_bytes=200)

    def meanwhile(seq: int, top: int, events: int) -> None:
        if late:
            _push(writer, acks, [late.pop()])

    projections.rebuild(db, folder, RULES[0], chunk=10, progress=meanwhile)
    writer.stop(5)
    values = {k: json.loads(v) for k, v, *_ in _store(db)}
    assert values["plugin/p0"] == {"name": "p0", "late": True}
    assert values["plugin/p1"] == {"name": "p1", "late": True}
    assert values["plugin/p2"]["n"] == 38


def test_kv_events_never_fold_live_or_on_rebuild(db) -> None:
    """A rule whose glob also matches the kv store's own events (kairo.*) folds neither them
    live nor on a rebuild: the rebuilt state equals the live one."""
    rule = Projection("everything", "kairo.*", "last/{type}")
    acks = _Acks()
    writer = Writer(db, WriterConfig(batch_size=50, flush_interval=0.05), ack=acks,
                    window=10_000, stats=Stats(),
                    projections=projections.Folder([rule], max_value_bytes=1000))
    writer.start()
    _push(writer, acks, _history()[:3])
    writer.kv(KvWrite(op="put", key="other/k", value="1"))
    writer.stop(5)
    live = _store(db)
    assert [row[0] for row in live] == ["last/kairo.plugin.state", "other/k"]
    projections.rebuild(db, projections.Folder([rule], max_value_bytes=1000), rule)
    assert _store(db) == live
