"""Path indexes, ``where`` through them, ``latest`` per key and retention's ``keep_latest``, on
both engines: real SQLite files and a real PostgreSQL (``any_store``); the plans are checked
with each engine's EXPLAIN."""

from __future__ import annotations

import json
import random
from typing import Any

import peewee
import pytest

from sidecar.api.protocol import QueryRequest
from sidecar.config import RetentionConfig, RetentionRule
from sidecar.core import paths
from sidecar.errors import FilterError
from sidecar.storage import dialect as dialects
from sidecar.storage import indexes
from sidecar.storage.purge import Policy, PurgeRun, plan
from sidecar.storage.queries import conditions, json_path, page_keys
from sidecar.storage.reads import Reader, open_reader
from sidecar.storage.startup import open_store
from tests.support.seed import COLUMNS, now_ms
from tests.support.stores import Store, target_rows

PLUGIN, ALERT, OTHER = "kairo.plugin.state", "kairo.alert.raised", "kairo.user.message"


def row(i: int, event_type: str, payload: dict[str, Any], *, age_ms: int = 0) -> tuple[Any, ...]:
    created = now_ms() - age_ms
    return (f"ev-{i:07d}", "kairo/t", event_type, "seed", json.dumps(payload), "{}", created,
            created, None, None, None)


def writer(store: Store) -> peewee.Database:
    return open_store(store.config, schema="migrate", shared=True)


def seeded(store: Store, rows: list[tuple[Any, ...]]) -> Store:
    store.insert_events([dict(zip(COLUMNS, r, strict=True)) for r in rows])
    return store


def explain(db: peewee.Database, query: peewee.Query) -> str:
    """The plan of ``query`` as one line: SQLite's EXPLAIN QUERY PLAN details, PostgreSQL's
    EXPLAIN with sequential scans off (a path index that can serve the query is then used:
    what is checked is that the query spells the expression as the index does)."""
    sql, params = db.get_sql_context().sql(query).query()
    if dialects.of(db).files:
        return " | ".join(r[3] for r in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params))
    with db.atomic():
        db.execute_sql("SET LOCAL enable_seqscan = off")
        return " | ".join(r[0] for r in db.execute_sql("EXPLAIN " + sql, params))


def uses_index(detail: str, name: str) -> bool:
    return f"USING INDEX {name}" in detail or f" on {name}" in detail or f"using {name}" in detail


def plan_of(db: peewee.Database, request: QueryRequest) -> str:
    cond = conditions(request, indexed=indexes.existing(db))
    return explain(db, page_keys(cond, limit=10, dialect=dialects.of(db)))


@pytest.fixture
def store(any_store: Store) -> Store:
    """3,000 events: plugin states (name, many updates), alerts (fingerprint), messages
    without either path (but one ``name`` shared with plugins)."""
    rng = random.Random(7)
    rows = []
    for i in range(3000):
        kind = i % 3
        if kind == 0:
            rows.append(row(i, PLUGIN, {"name": f"plugin-{rng.randrange(40):02d}", "on": i}))
        elif kind == 1:
            rows.append(row(i, ALERT, {"fingerprint": f"fp-{i:05d}", "name": "plugin-01"}))
        else:
            rows.append(row(i, OTHER, {"text": "hello", "n": i}))
    return seeded(any_store, rows)


def test_sync_creates_named_partial_indexes_and_drops_unlisted(store: Store):
    """An index per listed path, named from the path, holding only events with the path;
    dropping a path from the list drops its index, the rest stay."""
    db = writer(store)
    created, dropped = indexes.sync(db, ["payload.fingerprint", "payload.name"])
    names = {paths.parse(k).index_name for k in ("payload.fingerprint", "payload.name")}
    assert set(created) == names and dropped == []
    assert indexes.existing(db) == names
    fp = paths.parse("payload.fingerprint").index_name
    if store.engine == "sqlite":
        (entries,) = db.execute_sql(
            f'SELECT count(*) FROM events INDEXED BY "{fp}" '
            "WHERE json_extract(payload, '$.\"fingerprint\"') IS NOT NULL").fetchone()
    else:  # the index's own size: pg_class.reltuples after ANALYZE is exact on a small table
        db.execute_sql("ANALYZE events")
        (entries,) = db.execute_sql("SELECT reltuples::bigint FROM pg_class WHERE relname = %s",
                                    (fp,)).fetchone()
    assert entries == 1000  # the alerts only
    assert indexes.sync(db, ["payload.fingerprint", "payload.name"]) == ([], [])
    created, dropped = indexes.sync(db, ["payload.fingerprint"])
    assert created == [] and dropped == [paths.parse("payload.name").index_name]
    assert indexes.existing(db) == {fp}
    db.close()


def test_index_names_are_stable_and_distinct():
    """The same path always gets the same name; paths that read alike get different ones."""
    assert paths.parse("payload.a-b").index_name == paths.parse("payload.a-b").index_name
    assert paths.parse("payload.a-b").index_name != paths.parse("payload.a_b").index_name
    assert paths.parse("payload.a[0]").index_name.startswith(paths.INDEX_PREFIX)


def test_where_on_an_indexed_path_reads_the_index(store: Store):
    """EXPLAIN: an equality ``where`` on an indexed path searches its index, with a type glob
    too; the conditions flag only the unindexed keys."""
    db = writer(store)
    indexes.sync(db, ["payload.fingerprint"])
    db.execute_sql("ANALYZE")
    name = paths.parse("payload.fingerprint").index_name
    for request in (QueryRequest(where={"payload.fingerprint": "fp-00004"}),
                    QueryRequest(type="kairo.alert.*", where={"payload.fingerprint": "fp-00004"}),
                    QueryRequest(type=ALERT, where={"payload.fingerprint": "fp-00004"})):
        detail = plan_of(db, request)
        assert uses_index(detail, name), (request, detail)
    cond = conditions(QueryRequest(where={"payload.fingerprint": "fp-1", "payload.text": "x"}),
                      indexed=indexes.existing(db))
    assert cond.unindexed == ("payload.text",)
    cond = conditions(QueryRequest(where={"payload.fingerprint": True}),
                      indexed=indexes.existing(db))
    assert cond.unindexed == ("payload.fingerprint",)  # booleans compare json_type: no index
    db.close()
    reader = Reader(open_reader(store.config))
    cond = conditions(QueryRequest(type="kairo.alert.*", where={"payload.fingerprint": "fp-00004"}),
                      indexed=reader.path_indexes())
    assert [e.id for e in reader.page(cond, limit=10)] == ["ev-0000004"]
    reader.close()


def expected_latest(store: Store, key: str, types: set[str] | None) -> dict[Any, str]:
    """The newest event id per key value, folded in Python from every row."""
    newest: dict[Any, str] = {}
    for event_id, event_type, payload in target_rows(
            store.url, "SELECT id, type, payload FROM events ORDER BY seq"):
        value = payload if isinstance(payload, dict) else json.loads(payload)
        for part in key.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and (types is None or event_type in types):
            newest[value] = event_id
    return newest


@pytest.mark.parametrize("indexed", [True, False])
def test_latest_walks_every_key_once_with_its_newest_event(store: Store, indexed: bool):
    """Paging 7 keys at a time gives each key once, in key order, with its newest event of the
    filtered types, indexed or not, and says which."""
    db = writer(store)
    indexes.sync(db, ["payload.name"] if indexed else [])
    db.close()
    reader = Reader(open_reader(store.config))
    path = json_path("payload.name")
    for types in ({PLUGIN}, None):
        cond = conditions(QueryRequest(type=PLUGIN) if types else QueryRequest())
        got: dict[Any, str] = {}
        keys: list[Any] = []
        after = None
        while True:
            found = reader.latest_page(cond, path, limit=7, after=after, max_bytes=1 << 20)
            assert found.indexed is indexed
            for event in found.events:
                key = json.loads(event.payload)["name"]
                keys.append(key)
                got[key] = event.id
            if found.next is None:
                break
            after = found.next
        assert keys == sorted(keys) and len(keys) == len(set(keys))
        assert got == expected_latest(store, "payload.name", types)
    reader.close()


def test_latest_skip_scan_reads_the_index(store: Store):
    """With the key's index, both steps of a latest page search the index (SQLite: no sort)."""
    db = writer(store)
    indexes.sync(db, ["payload.name"])
    from sidecar.storage.latest import Event, path_value
    value = path_value(json_path("payload.name"))
    dialect = dialects.of(db)
    key = dialect.key_value(dialect.key_arg("plugin-03"))
    cond = conditions(QueryRequest(type="kairo.plugin.*"))
    for query in (Event.select(value).where(value > key, *dialect.key_terms(value))
                  .order_by(value).limit(1),
                  Event.select(Event.seq).where(value == key, *cond.terms)
                  .order_by(Event.seq.desc()).limit(1)):
        detail = explain(db, query)
        assert uses_index(detail, paths.parse("payload.name").index_name), detail
        if dialect.files:  # (PostgreSQL's planner picks by cost: on a small table it may sort)
            assert "TEMP B-TREE" not in detail, detail
    db.close()


def test_latest_key_must_be_a_json_path():
    """A bad key is refused naming ``key``, in our words."""
    with pytest.raises(FilterError) as caught:
        json_path("name", field="key")
    assert caught.value.field == "key" and "payload.<path>" in caught.value.message


def keep_policy(**kwargs: Any) -> Policy:
    return Policy.from_config(RetentionConfig(rules=[
        RetentionRule(type="kairo.plugin.*", max_age=1.0, keep_latest="payload.name"),
        RetentionRule(type="kairo.alert.*", max_age=1.0)], **kwargs))


def aged_store(store: Store) -> Store:
    """Plugin states and alerts all an hour old, and one recent plugin state."""
    rng = random.Random(11)
    rows = [row(i, PLUGIN if i % 2 else ALERT,
                {"name": f"p{rng.randrange(25)}"} if i % 2 else {"fingerprint": f"f{i}"},
                age_ms=3_600_000) for i in range(2000)]
    rows.append(row(5000, PLUGIN, {"name": "p3"}))
    rows.append(row(5001, PLUGIN, {"other": 1}, age_ms=3_600_000))  # no key: nothing to keep
    rows.append(row(5002, PLUGIN, {"name": None}, age_ms=3_600_000))  # JSON null: no key either
    return seeded(store, rows)


@pytest.mark.parametrize("indexed", [True, False])
def test_purge_keeps_exactly_the_newest_event_per_key(any_store: Store, indexed: bool):
    """max_age 1 s with keep_latest: every alert and every older plugin state goes, the newest
    state of each plugin name stays (p3's is the recent one); the dry run counts the same."""
    store = aged_store(any_store)
    expected = set(expected_latest(store, "payload.name", {PLUGIN}).values())
    db = writer(store)
    if indexed:
        indexes.sync(db, ["payload.name"])
    (would,) = [line.rows for line in plan(db, keep_policy(), now_ms())
                if line.reason.startswith("older")]
    result = PurgeRun(db, keep_policy(batch_size=97), now_ms()).run()
    left = {r[0] for r in db.execute_sql("SELECT id FROM events")}
    db.close()
    assert left == expected and len(expected) == 25
    assert "ev-0005000" in left
    assert result.by_age == would == 2003 - 25


def test_count_cap_and_disk_guard_spare_the_newest_per_key(any_store: Store):
    """max_events 1 deletes down to the kept events and no further; the disk guard (SQLite:
    PostgreSQL has none), short of room, deletes around them too."""
    from sidecar.storage.diskguard import DiskGuard, MinFree
    store = aged_store(any_store)
    expected = set(expected_latest(store, "payload.name", {PLUGIN}).values())
    db = writer(store)
    policy = Policy.from_config(RetentionConfig(max_events=1, rules=[
        RetentionRule(type="kairo.plugin.*", max_age=0.0 + 10**9, keep_latest="payload.name")]))
    PurgeRun(db, policy, now_ms()).run()
    assert {r[0] for r in db.execute_sql("SELECT id FROM events")} == expected
    if store.path is None:
        db.close()
        return
    seeded(store, [row(9000 + i, PLUGIN, {"name": "p1"}, age_ms=3_600_000) for i in range(50)])
    expected = set(expected_latest(store, "payload.name", {PLUGIN}).values())
    guard = DiskGuard(db, store.path, MinFree.parse(2**60), keep_s=0.0, policy=policy)
    guard.run()
    assert {r[0] for r in db.execute_sql("SELECT id FROM events")} == expected
    db.close()


def test_latest_pages_mixed_keys_once_each_in_the_engines_order(any_store: Store):
    """Strings and numbers as keys, 2 per page: each key once, in the engine's order (SQLite:
    numbers first; PostgreSQL: JSONB's, strings first); JSON null is no key anywhere, and on
    PostgreSQL neither is a boolean or an object (a cursor is a string or a number)."""
    values: list[Any] = ["b", 2.5, "a", 1, None, "b", 10, True, {"x": 1}, "a"]
    store = seeded(any_store, [row(i, PLUGIN, {"k": v}) for i, v in enumerate(values)])
    reader = Reader(open_reader(store.config))
    keys: list[Any] = []
    ids: list[str] = []
    after = None
    for _ in range(10):
        found = reader.latest_page(conditions(QueryRequest()), json_path("payload.k"), limit=2,
                                   after=after, max_bytes=1 << 20)
        keys += [json.loads(e.payload)["k"] for e in found.events]
        ids += [e.id for e in found.events]
        if found.next is None:
            break
        after = found.next
    reader.close()
    if store.engine == "sqlite":  # json_extract: true is 1 (the newer of the two), an object its text
        assert keys == [True, 2.5, 10, "a", "b", {"x": 1}]
    else:
        assert keys == ["a", "b", 1, 2.5, 10]
        assert ids == ["ev-0000009", "ev-0000005", "ev-0000003", "ev-0000001", "ev-0000006"]
