"""Time-bounded reads cost the matching rows, not the table: a small ``since``/``until`` range
is read through the ``(created_at, type)`` index (``Reader.time_plan``), a replay walks only the
seqs its range can hold (``Reader.seq_window``); and paging either way over back-dated and
future-dated events (``created_at`` not in ``seq`` order) gives each matching event once, in
seq order, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.api.protocol import QueryRequest, ReplayRequest
from sidecar.api.replay import CommitSignal
from sidecar.core.events import StoredEvent
from sidecar.storage import dialect as dialects
from sidecar.storage.queries import Conditions, conditions, page_keys
from sidecar.storage.reads import Reader, open_reader
from tests.conftest import wait_until
from tests.support.seed import COLUMNS
from tests.support.stores import Store, make_store
from tests.unit.api.test_replay import FakeSend, stream
from tests.unit.storage.test_latest import explain

BASE = 1_790_000_000_000
N = 3_000


def _created(i: int) -> int:
    """10 ms apart in seq order, but every 7th event back-dated into the first third and every
    11th dated into the last third (late and early clocks)."""
    if i % 7 == 3:
        return BASE + (i * 37 % (N // 3)) * 10 + 5
    if i % 11 == 5:
        return BASE + (2 * N // 3 + i * 13 % (N // 3)) * 10 + 5
    return BASE + i * 10


def _rows(start: int, stop: int, created: Callable[[int], int] = _created) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS, (
        f"ev-{i:06d}", "kairo/t", f"kairo.t{i % 3}", f"src-{i % 2}", json.dumps({"i": i}), "{}",
        created(i), created(i), None, None, None), strict=True)) for i in range(start, stop)]


def _expected(created: dict[int, int], since: int | None, until: int | None) -> list[int]:
    return [seq for seq, at in sorted(created.items())
            if (since is None or at >= since) and (until is None or at < until)]


def _pages(reader: Reader, body: dict[str, Any], *, limit: int = 97) -> list[int]:
    """Every page of ``query``, following ``next``, as the API answers them."""
    seqs: list[int] = []
    after: int | None = None
    while True:
        request = QueryRequest(**body, after=after, limit=limit)
        found = reader.answer_page(conditions(request), limit=limit, max_bytes=1 << 30,
                                   order=request.order)
        seqs += [e.seq for e in found.events]
        if found.next is None:
            return seqs
        after = found.next


RANGES = [  # (since, until) in event numbers: small and large, one bound and two
    (N - 200, None), (None, 150), (N // 2, None), (None, N // 2), (N // 3, N // 3 + 300), (None, None)]


@pytest.mark.parametrize("small", [10_000, 0], ids=["by-index", "walk"])
def test_query_pages_over_back_dated_events(any_store: Store, small: int) -> None:
    """Paging since/until (asc and desc) over events whose created_at is not in seq order gives
    exactly the matching events, each once, in seq order, with either plan."""
    any_store.insert_events(_rows(0, N))
    created = {i + 1: _created(i) for i in range(N)}  # seq = i + 1
    reader = Reader(open_reader(any_store.config), small_range=small)
    try:
        for lo, hi in RANGES:
            since = None if lo is None else BASE + lo * 10
            until = None if hi is None else BASE + hi * 10
            want = _expected(created, since, until)
            assert want, (lo, hi)
            body = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
            assert _pages(reader, body) == want, (lo, hi)
            assert _pages(reader, {**body, "order": "desc"}) == want[::-1], (lo, hi, "desc")
            assert _pages(reader, {**body, "source": "src-1"}) == \
                [s for s in want if (s - 1) % 2 == 1], (lo, hi, "source")
    finally:
        reader.close()


def _replay(reader: Reader, cond: Conditions, cursor: int | None,
            order: str = "asc") -> tuple[list[int], int | None]:
    """The pages a replay reads from ``cursor`` until one is short (``ReplayStream._stream``)."""
    seqs: list[int] = []
    while True:
        rows, more = reader.page_within(cond, limit=50, max_bytes=1 << 30, after=cursor,
                                        order=order)
        seqs += [e.seq for e in rows]
        cursor = rows[-1].seq if rows else cursor
        if not more:
            return seqs, cursor


def test_replay_window_keeps_back_dated_and_later_events(any_store: Store) -> None:
    """A replay's seq window (computed once) gives every matching event in seq order, and after
    it caught up the events stored later that match, back-dated ones included."""
    any_store.insert_events(_rows(0, N))
    created = {i + 1: _created(i) for i in range(N)}
    reader = Reader(open_reader(any_store.config))
    try:
        for lo, hi, after in [(None, 400, None), (N // 3, N // 3 + 300, 500), (N - 150, None, 10)]:
            since = None if lo is None else BASE + lo * 10
            until = None if hi is None else BASE + hi * 10
            request = ReplayRequest(since=since, until=until, after=after)
            cond = reader.seq_window(conditions(request))
            assert cond.window is not None and cond.window.newest == N
            seqs, cursor = _replay(reader, cond, after)
            assert seqs == [s for s in _expected(created, since, until) if s > (after or 0)]
            assert _replay(reader, cond, cursor)[0] == []
            assert _replay(reader, cond._replace(after=None), None, order="desc")[0] == \
                _expected(created, since, until)[::-1]
        # live: new events, some back-dated into the last range, some not matching
        later = {i + 1: BASE + (N - 100) * 10 + (i % 3) * 7 if i % 2 else BASE - 1
                 for i in range(N, N + 40)}
        any_store.insert_events(_rows(N, N + 40, lambda i: later[i + 1]))
        assert _replay(reader, cond, cursor)[0] == [s for s in later if later[s] >= since]
    finally:
        reader.close()


def test_small_time_ranges_are_read_through_the_created_at_index(any_store: Store) -> None:
    """since alone, until alone, desc, and with an unindexed term and a cursor: a small range
    is read through (created_at, type) on SQLite, not by walking every event in seq order
    (270 ms at 1,000,000 events for an hour with no event); a large one keeps the walk."""
    any_store.insert_events(_rows(0, N))
    reader = Reader(open_reader(any_store.config), small_range=1_000)
    try:
        cases: list[dict[str, Any]] = [
            {"since": BASE + (N - 200) * 10}, {"since": BASE + (N - 200) * 10, "order": "desc"},
            {"until": BASE + 100 * 10, "order": "desc"},
            {"since": BASE + (N - 200) * 10, "source": "src-1", "after": 5},
            {"since": BASE + N * 100}]
        for body in cases:
            cond = reader.time_plan(conditions(QueryRequest(**body)))
            assert cond.by_time, body
            if dialects.of(reader.db).files:
                plan = explain(reader.db, page_keys(cond, limit=101, order=body.get("order", "asc")))
                assert "events_created_at_type" in plan, (body, plan)
        large = reader.time_plan(conditions(QueryRequest(since=BASE + 10)))
        assert not large.by_time and not large.window
        keyed = reader.time_plan(conditions(QueryRequest(since=BASE, correlation_id="x")))
        assert not keyed.by_time  # an id drives the page
    finally:
        reader.close()


def _steps(reader: Reader, read: Callable[[], Any]) -> int:
    """SQLite virtual-machine steps (in tens) that ``read`` takes on ``reader``'s
    connection: a count of the rows it visits, not a time."""
    con = reader.db.connection()
    assert isinstance(con, sqlite3.Connection)
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    con.set_progress_handler(tick, 10)
    try:
        read()
    finally:
        con.set_progress_handler(None, 0)
    return steps[0]


def test_a_replays_last_page_stops_at_the_window(tmp_path: Path) -> None:
    """The last page of a replay bounded by until reads the window's few seqs, not every event
    stored after the last match (a tenth of the steps here; at 1,000,000 events it read to the
    end of the table: 0.14-0.2 s)."""
    store = make_store("sqlite", f"sqlite:///{tmp_path / 'kairo.db'}")
    store.insert_events(_rows(0, N, lambda i: BASE + i * 10))
    reader = Reader(open_reader(store.config))
    try:
        request = ReplayRequest(until=BASE + 200 * 10, after=150)
        plain = conditions(request)
        windowed = reader.seq_window(plain)
        assert windowed.window is not None and windowed.window.high == 200

        def last_page(cond: Conditions) -> Callable[[], tuple[list[StoredEvent], bool]]:
            return lambda: reader.page_within(cond, limit=100, max_bytes=1 << 30, after=200)

        assert last_page(windowed)() == ([], False)
        few, walked = _steps(reader, last_page(windowed)), _steps(reader, last_page(plain))
        assert few * 10 < walked, (few, walked)
    finally:
        reader.close()


def test_a_live_replay_with_until_forwards_a_late_back_dated_event(any_store: Store) -> None:
    """A live replay bounded by until (its seq window read at the start) sends the range, then
    after caught_up an event stored later but dated inside the range, not one dated after."""
    any_store.insert_events(_rows(0, 500, lambda i: BASE + i * 10))
    send = FakeSend()
    commits = CommitSignal()
    s = stream(any_store.config, send, commits=commits, live=True, until=BASE + 100 * 10)
    s.start()
    try:
        wait_until(lambda: any(b.get("caught_up") for b in send.bodies), message="caught_up")
        any_store.insert_events(_rows(500, 502, lambda i: BASE + 50 * 10 if i == 500
                                      else BASE + 10**6))
        commits.notify()
        wait_until(lambda: len(send.events()) == 101, message="the late event")
    finally:
        s.cancel()
        assert s.join(5)
    assert [e["seq"] for e in send.events()] == [*range(1, 101), 501]
