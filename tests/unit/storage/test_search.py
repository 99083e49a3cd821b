"""Full-text search on a real SQLite file (``sidecar.storage.search``): what is indexed and when,
ranking, phrases, prefixes, filters, paging, deletes keeping the index in step, the resumable
backfill and config changes. The engine-neutral tests (``anydb``) run on PostgreSQL too
(``storage.search_pg``: a GIN index over a tsvector)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import peewee
import pytest
from peewee_migrate import Router

from sidecar.api.protocol import QueryRequest
from sidecar.config import DatabaseConfig, RetentionConfig, RetentionRule, SearchConfig, SearchPaths
from sidecar.core.search_query import parse, to_fts
from sidecar.errors import FilterError, StorageError
from sidecar.storage import search
from sidecar.storage.db import MIGRATIONS_DIR, migrate, open_database
from sidecar.storage.purge import Policy, PurgeRun
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader
from tests.support.seed import COLUMNS, now_ms
from tests.support.stores import Store

ON = SearchConfig(enabled=True)


def _row(id_: str, payload: dict[str, Any], *, type: str = "kairo.note", source: str = "pi",
         created_at: int | None = None, correlation_id: str | None = None) -> tuple[Any, ...]:
    at = now_ms() if created_at is None else created_at
    return (id_, "kairo/" + type.replace(".", "/"), type, source, json.dumps(payload), "{}",
            at, at, correlation_id, None, None)


def _insert(db: peewee.Database, rows: list[tuple[Any, ...]]) -> None:
    sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join([db.param] * len(COLUMNS))})"
    with db.atomic():
        db.cursor().executemany(sql, rows)


@pytest.fixture
def db(tmp_path: Path) -> peewee.Database:
    database = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'kairo.db'}"))
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def anydb(any_store: Store) -> peewee.Database:
    """A migrated database on each engine (SQLite file, fresh PostgreSQL database)."""
    database = open_database(any_store.config)
    yield database
    database.close()


def _pg(db: peewee.Database) -> bool:
    return not search.available(db)


def _ids(db: peewee.Database, query: str, *, order: str = "rank", limit: int = 100,
         after: int | str | None = None, **filters: Any) -> list[str]:
    found = search.matches(db, parse(query), conditions(QueryRequest(**filters)), order=order,
                           limit=limit, after=after)
    if not found.hits:
        return []
    by_seq = dict(db.execute_sql(
        f"SELECT seq, id FROM events WHERE seq IN ({', '.join([db.param] * len(found.hits))})",
        [h.seq for h in found.hits]).fetchall())
    return [by_seq[h.seq] for h in found.hits]


def test_new_events_are_searchable_in_the_inserting_transaction(db):
    """An event inserted after search is on is in the index within its own transaction (seen
    before the commit), with type, source and every payload string; none before enabling."""
    _insert(db, [_row("old", {"text": "boiler"})])
    search.sync(db, ON)
    with db.atomic():
        _insert(db, [_row("new", {"nested": {"list": ["the Boiler is hot"]}, "n": 5})])
        assert _ids(db, "boiler") == ["new"]
    assert _ids(db, "hot") == ["new"] and _ids(db, "kairo") == ["new"] and _ids(db, "pi") == ["new"]
    assert _ids(db, "5") == []  # numbers are no strings: not indexed
    search.integrity_check(db)


def test_ranking_puts_the_denser_match_first(anydb):
    """bm25: the short event about the boiler ranks before the long one that mentions it once;
    ``desc`` orders by time instead."""
    db = anydb
    search.sync(db, ON)
    _insert(db, [_row("long", {"text": "boiler " + " ".join(f"word{i}" for i in range(60))}),
                 _row("short", {"text": "boiler boiler pressure"}),
                 _row("none", {"text": "kitchen light"})])
    assert _ids(db, "boiler") == ["short", "long"]
    assert _ids(db, "boiler", order="desc") == ["short", "long"]  # the newer first
    assert _ids(db, "boiler", order="asc") == ["long", "short"]


def test_phrases_prefixes_and_operators(anydb):
    """A phrase matches adjacent words only; ``boil*`` matches boiler and boiling; AND, OR, NOT,
    parentheses and a field in front of a term select as written; diacritics fold (SQLite)."""
    db = anydb
    search.sync(db, ON)
    _insert(db, [_row("a", {"text": "disk full on /var"}),
                 _row("b", {"text": "full disk check"}),
                 _row("c", {"text": "boiling water"}, type="kairo.kitchen"),
                 _row("d", {"text": "Boiler café"}, source="cellar")])
    assert _ids(db, '"disk full"') == ["a"]
    assert sorted(_ids(db, "disk full")) == ["a", "b"]
    assert sorted(_ids(db, "boil*")) == ["c", "d"]
    assert sorted(_ids(db, "boil* NOT water")) == ["d"]
    assert sorted(_ids(db, "boil* AND NOT water")) == ["d"]
    cafe = "café" if _pg(db) else "cafe"  # PostgreSQL's simple config keeps diacritics
    assert sorted(_ids(db, f"{cafe} OR (disk AND check)")) == ["b", "d"]
    assert _ids(db, "type:kitchen") == ["c"] and _ids(db, "source:cellar") == ["d"]
    assert _ids(db, "payload:kitchen") == []
    assert _ids(db, "disk-full") == ["a"]  # punctuation inside a word: a phrase of its tokens


def test_a_wide_time_range_reads_the_matches_without_seq_bounds(db, monkeypatch):
    """A range holding more events than RANGE_PROBE is filtered on the events alone: the same
    answer as through the seq bounds."""
    search.sync(db, ON)
    t0 = now_ms() - 10_000
    _insert(db, [_row(f"e{i}", {"m": "alarm" if i % 2 else "quiet"}, created_at=t0 + i)
                 for i in range(20)])
    narrow = sorted(_ids(db, "alarm", since=t0 + 5, until=t0 + 15))
    monkeypatch.setattr(search, "RANGE_PROBE", 3)
    assert sorted(_ids(db, "alarm", since=t0 + 5, until=t0 + 15)) == narrow
    assert narrow == ["e11", "e13", "e5", "e7", "e9"]


def test_filters_combine_with_the_query(anydb):
    """type glob, source, time range and correlation id narrow the matches."""
    db = anydb
    search.sync(db, ON)
    t0 = now_ms() - 10_000
    _insert(db, [_row("a", {"m": "alarm"}, type="kairo.alert.disk", created_at=t0),
                 _row("b", {"m": "alarm"}, type="kairo.alert.cpu", source="x", created_at=t0 + 1000),
                 _row("c", {"m": "alarm"}, type="kairo.note", created_at=t0 + 2000,
                      correlation_id="wf-1"),
                 _row("d", {"m": "alarm"}, type="kairo.alert.disk", created_at=t0 + 3000,
                      correlation_id="wf-1")])
    assert sorted(_ids(db, "alarm", type="kairo.alert.*")) == ["a", "b", "d"]
    assert sorted(_ids(db, "alarm", type="kairo.alert.*", source="pi")) == ["a", "d"]
    assert sorted(_ids(db, "alarm", since=t0 + 1000, until=t0 + 3000)) == ["b", "c"]
    assert _ids(db, "alarm", since=t0 + 10_000) == []
    assert sorted(_ids(db, "alarm", correlation_id="wf-1")) == ["c", "d"]
    assert _ids(db, "alarm", correlation_id="wf-1", type="kairo.alert.*") == ["d"]


@pytest.mark.parametrize("order", ["rank", "desc", "asc"])
def test_paging_returns_every_match_once(anydb, order: str):
    """Walking the cursor, 7 at a time, returns each of 50 matches exactly once, in order."""
    db = anydb
    search.sync(db, ON)
    _insert(db, [_row(f"e{i:02d}", {"text": "sensor " * (1 + i % 5) + f"reading {i}"})
                 for i in range(50)] + [_row("x", {"text": "other"})])
    cond = conditions(QueryRequest())
    seen: list[tuple[float, int]] = []
    after: int | str | None = None
    while True:
        found = search.matches(db, parse("sensor"), cond, order=order, limit=7, after=after)
        seen.extend((h.rank, h.seq) for h in found.hits)
        if not found.more:
            break
        last = found.hits[-1]
        after = f"{last.rank!r}:{last.seq}" if order == "rank" else last.seq
    assert len(seen) == 50 and len({s for _, s in seen}) == 50
    if order == "rank":
        assert seen == sorted(seen)
    else:
        seqs = [s for _, s in seen]
        assert seqs == sorted(seqs, reverse=order == "desc")


def test_a_rank_window_ranks_the_newest_matches_only(anydb):
    """With ``rank_window`` 10 of 50 matches, the hits are the newest 10, best first, paged
    without a repeat, and ``window`` says the ranking was cut; a wider window says nothing."""
    db = anydb
    search.sync(db, ON)
    _insert(db, [_row(f"e{i:02d}", {"text": "sensor " * (1 + i % 5) + f"reading {i}"})
                 for i in range(50)])
    cond = conditions(QueryRequest())
    seen: list[tuple[float, int]] = []
    after: str | None = None
    while True:
        found = search.matches(db, parse("sensor"), cond, order="rank", limit=4, after=after,
                               rank_window=10)
        assert found.window == 10
        seen.extend((h.rank, h.seq) for h in found.hits)
        if not found.more:
            break
        after = f"{found.hits[-1].rank!r}:{found.hits[-1].seq}"
    assert sorted(s for _, s in seen) == list(range(41, 51)) and seen == sorted(seen)
    wide = search.matches(db, parse("sensor"), cond, order="rank", limit=100, after=None,
                          rank_window=50)
    assert wide.window is None and len(wide.hits) == 50


def test_a_cursor_of_the_wrong_kind_is_refused_naming_after(anydb):
    """A seq for a ranked search, or a rank cursor for a search by time: FilterError on after."""
    db = anydb
    search.sync(db, ON)
    cond = conditions(QueryRequest())
    for order, after in (("rank", 5), ("rank", "nonsense"), ("desc", "1.5:3")):
        for window in (0, 100):
            with pytest.raises(FilterError) as err:
                search.matches(db, parse("x"), cond, order=order, limit=5, after=after,
                               rank_window=window)
            assert err.value.field == "after"


def test_purge_and_keep_latest_keep_the_index_in_step(db):
    """A retention purge (max_events, and a keep_latest rule) deletes events and their tokens:
    the deleted are no longer found, the kept still are, and the index matches the events."""
    search.sync(db, ON)
    _insert(db, [_row(f"s{i:03d}", {"name": f"dev{i % 4}", "text": f"status {i}"},
                      type="kairo.status", created_at=now_ms() - 5 * 86_400_000 + i)
                 for i in range(120)])
    _insert(db, [_row(f"n{i:03d}", {"text": "note"}) for i in range(30)])
    retention = RetentionConfig(max_events=40, batch_size=7, rules=[
        RetentionRule(type="kairo.status", max_age=86400.0, keep_latest="payload.name")])
    PurgeRun(db, Policy.from_config(retention), now_ms()).run()
    search.integrity_check(db)
    left = {r[0] for r in db.execute_sql("SELECT id FROM events WHERE type = 'kairo.status'")}
    assert left == {"s116", "s117", "s118", "s119"}  # the newest per name
    assert set(_ids(db, "status")) == left
    assert len(_ids(db, "note")) == db.execute_sql(
        "SELECT count(*) FROM events WHERE type = 'kairo.note'").fetchone()[0]


def test_backfill_is_resumable_after_an_interruption(db, tmp_path: Path):
    """Existing events are indexed in steps; a step that dies before its commit leaves the
    watermark where it was, and the next run goes on from there to a complete, consistent
    index. Meanwhile new events are searchable at once and answers say the index is partial."""
    _insert(db, [_row(f"o{i:04d}", {"text": f"archive item {i}"}) for i in range(1000)])
    search.sync(db, ON)
    _insert(db, [_row("live", {"text": "archive live"})])
    assert search.backfill(db, limit=300) == 300
    partial = search.matches(db, to_fts("archive"), conditions(QueryRequest()), order="asc",
                             limit=2000, after=None)
    assert not partial.state.complete and partial.state.backfilled_to == 300
    assert len(partial.hits) == 301  # 300 backfilled and the live one
    # a crash in the middle of a step: the transaction never commits
    con = sqlite3.connect(tmp_path / "kairo.db", isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO event_search (rowid, type, source, body) SELECT seq, type, source, "
                "'archive' FROM events WHERE seq > 300 AND seq <= 600")
    con.execute("UPDATE event_search_state SET backfilled_to = 600")
    con.close()  # closed without COMMIT: rolled back, as a power cut would
    with db.atomic():
        assert search.state(db.cursor()).backfilled_to == 300
        assert search.pending(db.cursor()) == 700
    steps: list[int] = []
    assert search.backfill_all(db, batch=256, progress=steps.append) == 700
    assert steps == [256, 256, 188]
    with db.atomic():
        assert search.state(db.cursor()).complete
    assert len(_ids(db, "archive", limit=2000)) == 1001
    search.integrity_check(db)


def test_a_changed_config_reindexes_and_paths_choose_the_text(db):
    """Paths per type glob index only those strings; changing the config (paths, tokenizer)
    empties the index and indexes again; trigram finds substrings; disabling empties it."""
    _insert(db, [_row("a", {"message": "disk nearly full", "host": "kitchen"}, type="kairo.alert"),
                 _row("b", {"message": "kitchen light on"})])
    rules = [SearchPaths(type="kairo.alert*", paths=["payload.message"])]
    assert search.sync(db, SearchConfig(enabled=True, paths=rules)).action == "enabled"
    search.backfill_all(db, batch=100)
    assert _ids(db, "kitchen") == ["b"] and _ids(db, "nearly") == ["a"]
    assert search.sync(db, SearchConfig(enabled=True, paths=rules)).action == "unchanged"
    assert search.sync(db, SearchConfig(enabled=True, tokenizer="trigram")).action == "reindex"
    assert _ids(db, "itche") == []  # existing events wait for the backfill
    search.backfill_all(db, batch=100)
    assert sorted(_ids(db, "itche")) == ["a", "b"]
    search.integrity_check(db)
    assert search.sync(db, SearchConfig()).action == "disabled"
    with pytest.raises(search.SearchUnavailable) as off:
        _ids(db, "kitchen")
    assert off.value.code == "search_disabled"
    search.integrity_check(db)


def test_the_check_finds_an_index_out_of_step(db):
    """Events deleted behind the trigger's back (dropped) are reported as tokens that differ."""
    search.sync(db, ON)
    _insert(db, [_row(f"e{i}", {"text": f"word {i}"}) for i in range(10)])
    db.execute_sql("DROP TRIGGER events_search_delete")
    db.execute_sql("DELETE FROM events WHERE id = 'e3'")
    with pytest.raises(StorageError, match="tokens differ"):
        search.integrity_check(db)


def test_reader_page_carries_events_snippets_and_the_next_cursor(db, tmp_path: Path):
    """``Reader.search_page``: hits with their events and highlighted snippets, cut to fit
    max_bytes (at least one), ``next`` resuming after the last hit given."""
    search.sync(db, ON)
    _insert(db, [_row(f"e{i}", {"text": f"the boiler pressure {i}", "pad": "x" * 2000})
                 for i in range(5)])
    reader = Reader(open_reader(DatabaseConfig(), path=tmp_path / "kairo.db"))
    page = reader.search_page(to_fts("pressure"), conditions(QueryRequest()), order="desc",
                              limit=5, after=None, marks=("<b>", "</b>"), max_bytes=5000)
    assert [e.id for _, e in page.hits] == ["e4", "e3"] and page.next == page.hits[-1][1].seq
    assert "<b>pressure</b>" in page.hits[0][0].snippet
    rest = reader.search_page(to_fts("pressure"), conditions(QueryRequest()), order="desc",
                              limit=5, after=page.next, marks=("[", "]"), max_bytes=100_000)
    assert [e.id for _, e in rest.hits] == ["e2", "e1", "e0"] and rest.next is None
    reader.db.close()


def test_trigram_is_available_in_this_sqlite(db):
    """The build under test has FTS5's trigram tokenizer (a build without it gets a config
    error naming search.tokenizer at start)."""
    assert search.tokenizer_available(db, "trigram")


def test_migration_013_merges_sixteen_incrementally_and_a_new_table_keeps_it(db, tmp_path: Path):
    """event_search merges 16 segments a level with crisismerge 64 (migration 013), a table
    created again for another tokenizer gets the same, and rolling 013 back restores FTS5's."""
    def merge() -> dict[str, int]:
        return dict(db.execute_sql("SELECT k, v FROM event_search_config "
                                   "WHERE k IN ('automerge', 'crisismerge')").fetchall())

    assert merge() == {"automerge": 16, "crisismerge": 64}
    search.sync(db, ON)
    search.sync(db, SearchConfig(enabled=True, tokenizer="trigram"))  # DROP and CREATE
    assert merge() == {"automerge": 16, "crisismerge": 64}
    search.sync(db, SearchConfig())  # off: delete-all keeps the table's settings
    assert merge() == {"automerge": 16, "crisismerge": 64}
    Router(db, migrate_dir=MIGRATIONS_DIR).rollback()
    assert merge() == {"automerge": 4, "crisismerge": 16}


def test_prefix_snippets_come_from_each_hits_own_event(db):
    """A prefix search's page (read over the hits' rowid range, not one lookup per hit) gives
    every hit the snippet of its own event, never of a matching event between them."""
    search.sync(db, ON)
    _insert(db, [_row(f"e{i}", {"text": f"boiler{'s' if i % 2 else ''} reading {i}"})
                 for i in range(30)])
    for order in ("desc", "rank"):
        found = search.matches(db, to_fts("boil* AND reading"), conditions(QueryRequest()),
                               order=order, limit=5, after=None)
        assert len(found.hits) == 5
        for hit in found.hits:  # seq i + 1 holds "boiler(s) reading i"
            word = "boilers" if (hit.seq - 1) % 2 else "boiler"
            assert hit.snippet == f"[{word}] [reading] {hit.seq - 1}"
    odd = search.matches(db, to_fts("boilers"), conditions(QueryRequest()), order="desc",
                         limit=3, after=None)
    assert [h.snippet for h in odd.hits] == [f"[boilers] reading {i}" for i in (29, 27, 25)]


HOSTILE = ["'", "''", "\\", "\\'", "a & b | !c", "<->", "boil:*", "x:A", "!!", "&", "|",
           "'); DROP TABLE events; --", '"\'"', '"a\' | \'b"', "NEAR(a b)", "type:'x'",
           "payload:\\\\", "日本語", "x" * 3000, "a:*B & c", '"..."', "(((a)))", "-", ":",
           '""', '" "', '"\t"', 'a ""', '"" OR a', 'a NOT ""']


def test_hostile_queries_never_reach_the_engine_as_syntax(anydb):
    """Quotes, backslashes and tsquery/FTS5 operators typed by a user are text on both
    engines: each query answers (or is refused naming ``query``), never a storage error, and
    the events are still there."""
    db = anydb
    search.sync(db, ON)
    _insert(db, [_row("q", {"text": "a & b | !c it's x:A \\ boil:*"})])
    for text in HOSTILE:
        try:
            _ids(db, text)
        except FilterError as exc:
            assert exc.field == "query", text
    assert _ids(db, "it's") == ["q"]
    assert db.execute_sql("SELECT count(*) FROM events").fetchone()[0] == 1


def test_postgresql_snippets_mark_the_matches_with_the_asked_marks(anydb):
    """A hit's snippet holds the matched words (a prefix's too) between the request's marks,
    a mark with a quote or a comma included."""
    db = anydb
    search.sync(db, ON)
    _insert(db, [_row("e", {"text": "the boiler pressure is high", "n": 3})])
    for marks in (("[", "]"), ("<b>", "</b>"), ("'x,", "\"y")):
        found = search.matches(db, parse("boil* pressure"), conditions(QueryRequest()),
                               order="rank", limit=5, after=None, marks=marks)
        snippet = found.hits[0].snippet
        assert f"{marks[0]}pressure{marks[1]}" in snippet, snippet
        assert f"{marks[0]}boiler{marks[1]}" in snippet, snippet


def test_postgresql_sync_builds_drops_and_rebuilds_the_gin_index(any_store: Store):
    """On PostgreSQL ``sync`` builds the GIN index over existing events (found at once,
    complete, nothing to backfill), leaves it when unchanged, rebuilds it for other fields
    and drops it when off (then ``search_disabled``); the planner can use it for a match."""
    if any_store.engine != "postgres":
        pytest.skip("the GIN index is PostgreSQL's")
    db = open_database(any_store.config)
    try:
        _insert(db, [_row("old", {"text": "boiler"}, source="cellar")])
        assert search.sync(db, ON).action == "enabled"
        assert _ids(db, "boiler") == ["old"] and search.search_state(db).complete
        assert search.sync(db, ON).action == "unchanged"
        with db.atomic():  # what ``search-index status``/``rebuild`` read: nothing waits
            assert search.state(db.cursor()).complete and search.pending(db.cursor()) == 0
        assert search.backfill(db, limit=100) == 0
        with db.atomic():
            db.execute_sql("SET LOCAL enable_seqscan = off")
            plan = " ".join(r[0] for r in db.execute_sql(
                "EXPLAIN SELECT seq FROM events WHERE "
                + search.search_pg.match_sql(("type", "source", "payload")), ("'boiler'",)))
        assert "events_search" in plan, plan
        only_type = SearchConfig(enabled=True, fields=["type"])
        assert search.sync(db, only_type).action == "reindex"
        assert _ids(db, "boiler") == [] and _ids(db, "note") == ["old"]
        assert search.sync(db, SearchConfig()).action == "disabled"
        assert search.unavailable(db).code == "search_disabled"
        with pytest.raises(search.SearchUnavailable):
            _ids(db, "boiler")
    finally:
        db.close()


def test_postgresql_sidecars_starting_together_build_the_index_once(any_store: Store):
    """Two ``sync`` at once on one PostgreSQL database (two sidecars of a group starting): one
    builds the index, the other waits and finds it (no "already exists" error)."""
    if any_store.engine != "postgres":
        pytest.skip("the GIN index is PostgreSQL's")
    dbs = [open_database(any_store.config) for _ in range(2)]
    _insert(dbs[0], [_row(f"e{i}", {"text": f"boiler {i}"}) for i in range(2000)])
    actions: list[str] = []
    errors: list[BaseException] = []

    def start(db: peewee.Database) -> None:
        try:
            actions.append(search.sync(db, ON).action)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for db in dbs:
        db.close()
    assert not errors and sorted(actions) == ["enabled", "unchanged"]
