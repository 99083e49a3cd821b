"""The web console's JSON and pages over plain HTTP, against a real daemon (in-process), a real
Mosquitto and a real SQLite file seeded with events, a hostile event and dead letters
(``tests.support.console``): the token, logout, paging, filters, search, the tail cursor, the
chart, dead letters, health, bounds and bad parameters."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.http import auth
from sidecar.http.console import MARKS
from tests.conftest import ROOT, wait_until
from tests.support.broker import Broker
from tests.support.console import (
    DOORS,
    SEEDED,
    TOKEN,
    XSS_ID,
    XSS_TEXT,
    Site,
    seeded_site,
)
from tests.support.publisher import event_messages
from tests.system.test_observability import Running, env_for, free_port, get

STATIC = ROOT / "sidecar" / "http" / "static"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with seeded_site(tmp_path_factory.mktemp("console")) as s:
        yield s


@pytest.fixture(scope="module")
def search_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The seeded daemon with ``[search] enabled = true``."""
    with seeded_site(tmp_path_factory.mktemp("console-search"), search__enabled="true") as s:
        yield s


def _raw(site: Site, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    address = site.run.config.http.address
    assert address is not None
    con = http.client.HTTPConnection(*address, timeout=10)
    try:
        con.request(method, path, body=body, headers=headers or {})
        answer = con.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        con.close()


def _cookie(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";", 1)[0]


# ------------------------------------------------------------------------------ token
def test_console_needs_the_token(site: Site) -> None:
    """Without the token every console path is 401 (the page: the login form, no data); the
    bearer token, the form's POST /login and /?token= all work, the last two by a cookie that
    is HttpOnly and SameSite=Strict and does not hold the token."""
    for path in ("/api/events", "/api/event?id=" + XSS_ID, "/api/tail", "/api/chart",
                 "/api/dead-letters", "/api/dead-letter?id=1", "/api/health", "/static/console.js",
                 "/api/search?q=pwned", "/api/features"):
        status, _, body = _raw(site, "GET", path)
        assert status == 401, path
        assert b"kairo.test" not in body and b"pwned" not in body
    status, headers, page = _raw(site, "GET", "/")
    assert status == 401 and headers["content-type"].startswith("text/html")
    assert b'action="/login"' in page and b"kairo.test" not in page
    status, _, _ = site.get("/api/events", token="wrong-token-wrong-token")
    assert status == 401
    assert site.get("/api/events")[0] == 200  # Authorization: Bearer

    form = {"content-type": "application/x-www-form-urlencoded"}
    status, headers, _ = _raw(site, "POST", "/login", body=b"token=nope", headers=form)
    assert status == 401 and "set-cookie" not in headers
    status, headers, _ = _raw(site, "POST", "/login", body=f"token={TOKEN}".encode(), headers=form)
    assert status == 303 and headers["location"] == "/"
    flags = [f.strip().lower() for f in headers["set-cookie"].split(";")]
    assert "httponly" in flags and "samesite=strict" in flags
    cookie = _cookie(headers)
    assert TOKEN not in cookie
    status, _, body = _raw(site, "GET", "/api/events?limit=1", headers={"cookie": cookie})
    assert status == 200 and json.loads(body)["events"]
    status, _, _ = _raw(site, "GET", "/api/events", headers={"cookie": cookie[:-2] + "00"})
    assert status == 401

    status, headers, _ = _raw(site, "GET", f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    status, _, page = _raw(site, "GET", "/", headers={"cookie": _cookie(headers)})
    assert status == 200 and b"/static/console.js" in page
    status, _, page = _raw(site, "GET", "/?token=nope")
    assert status == 401 and b'action="/login"' in page


def test_request_lines_in_the_log_never_hold_the_token() -> None:
    """The debug log's request line has a ``token=`` value blanked, wherever it stands."""
    line = f'"GET /?token={TOKEN}&x=1 HTTP/1.1" 303 -'
    assert TOKEN not in auth.redact(line) and "x=1" in auth.redact(line)
    assert TOKEN not in auth.redact(f"/a?b=2&TOKEN={TOKEN}")


def test_only_login_takes_post(site: Site) -> None:
    """POST anywhere but /login and /logout is 405; a login body over the limit is 400, not
    read."""
    assert _raw(site, "POST", "/api/events", body=b"x")[0] == 405
    status, _, body = _raw(site, "POST", "/login", body=b"token=" + b"a" * 5000,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert status == 400 and b"1024" in body


def test_logout_clears_the_cookie(site: Site) -> None:
    """POST /logout answers 303 to / with a Set-Cookie that empties the login cookie at once
    (Max-Age=0, same path and flags); the emptied cookie gets the login form, not the console."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    status, headers, _ = _raw(site, "POST", "/login", body=f"token={TOKEN}".encode(), headers=form)
    assert status == 303
    status, headers, _ = _raw(site, "POST", "/logout", headers={"cookie": _cookie(headers)})
    assert status == 303 and headers["location"] == "/"
    flags = [f.strip().lower() for f in headers["set-cookie"].split(";")]
    assert flags[0] == f"{auth.COOKIE}=" and "max-age=0" in flags and "path=/" in flags
    assert "httponly" in flags and "samesite=strict" in flags
    status, _, page = _raw(site, "GET", "/", headers={"cookie": _cookie(headers)})
    assert status == 401 and b'action="/login"' in page


def test_features_say_logout_and_search_off(site: Site) -> None:
    """With a token and search off (the default) /api/features offers logout and no search
    box, saying why; /api/search is then a 409 saying how to turn search on."""
    features = site.json("/api/features")
    assert features["logout"] is True and features["search"] is False
    assert "[search] enabled = true" in features["search_note"]
    status, _, body = site.get("/api/search", {"q": "door"})
    answer = json.loads(body)
    assert status == 409 and "[search] enabled = true" in answer["message"]


# ------------------------------------------------------------------------------ search
def _marked(snippet: str) -> list[str]:
    return re.findall(f"{MARKS[0]}(.*?){MARKS[1]}", snippet)


def test_search_pages_matches_newest_first(search_site: Site) -> None:
    """/api/search?q=door walked 3 a page by ``before`` gives every door event once, newest
    first (the seqs SQL lists), each snippet with the matched word between the marks."""
    seen: list[int] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"q": "door", "limit": 3}
        if before is not None:
            params["before"] = before
        page = search_site.json("/api/search", params)
        assert page["complete"] is True
        for hit in page["hits"]:
            assert [w.lower() for w in _marked(hit["snippet"])] == ["door"], hit["snippet"]
        seen += [hit["event"]["seq"] for hit in page["hits"]]
        before = page["next"]
        if before is None:
            break
    stored = search_site.rows("SELECT seq FROM events WHERE type = 'kairo.door.opened' "
                              "ORDER BY seq DESC")
    assert seen == [seq for (seq,) in stored] and len(seen) == DOORS


@pytest.mark.parametrize(("params", "expect"), [
    ({"q": "door", "topic": "kairo/door/0"},
     "SELECT id FROM events WHERE type = 'kairo.door.opened' AND topic = 'kairo/door/0'"),
    ({"q": "door", "type": "kairo.test.*"}, "SELECT id FROM events WHERE 0"),
    ({"q": "door", "since": "1h", "source": "door-sensor,other"},
     "SELECT id FROM events WHERE type = 'kairo.door.opened'"),
    ({"q": "pwned"}, f"SELECT '{XSS_ID}'"),
    ({"q": "door OR hostile"},
     "SELECT id FROM events WHERE type IN ('kairo.door.opened', 'kairo.test.xss')"),
])
def test_search_combines_with_the_filters(search_site: Site, params: dict[str, str],
                                          expect: str) -> None:
    """Search text and the form's filters together select the events SQL selects, newest
    first."""
    page = search_site.json("/api/search", {**params, "limit": 500})
    expected = [event_id for (event_id,) in search_site.rows(expect + " ORDER BY 1")]
    got = [hit["event"]["id"] for hit in page["hits"]]
    assert sorted(got) == expected and page["next"] is None
    seqs = [hit["event"]["seq"] for hit in page["hits"]]
    assert seqs == sorted(seqs, reverse=True)


def test_search_keeps_hostile_text_as_data(search_site: Site) -> None:
    """The hostile event's hit carries its markup as characters of the JSON snippet, the word
    between the marks; the answer is JSON with nosniff."""
    status, headers, body = search_site.get("/api/search", {"q": "pwned"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    (hit,) = json.loads(body)["hits"]
    assert hit["event"]["payload"] == {"html": XSS_TEXT}
    assert set(_marked(hit["snippet"])) == {"pwned"} and "document.title=" in hit["snippet"]


def test_features_offer_search_when_on(search_site: Site) -> None:
    """With ``[search] enabled = true`` /api/features offers the search box."""
    features = search_site.json("/api/features")
    assert features["search"] is True and features["search_note"] is None


@pytest.mark.parametrize(("params", "field", "words"), [
    ({}, "q", "required"),
    ({"q": "   "}, "q", "required"),
    ({"q": '"disk full'}, "q", "not closed"),
    ({"q": "NOT door"}, "q", "NOT"),
    ({"q": "door AND"}, "q", ""),
    ({"q": "(door"}, "q", ""),
    ({"q": "x" * 1001}, "q", "1000"),
    ({"q": "door", "before": "abc"}, "before", ""),
    ({"q": "door", "limit": "0"}, "limit", ""),
    ({"q": "door", "order": "rank"}, "order", "unknown"),
    ({"q": "door", "type": "kairo.[ab]*"}, "type", ""),
    ({"q": ["a", "b"]}, "q", "more than once"),
])
def test_bad_search_parameters_are_400_naming_them(search_site: Site, params: dict[str, Any],
                                                   field: str, words: str) -> None:
    """A malformed search text or parameter is a 400 naming it (``q``, not the op's
    ``query``), in our words: no msgspec, SQLite or FTS5 text."""
    status, _, body = search_site.get("/api/search", params)
    assert status == 400, (status, body)
    answer = json.loads(body)
    assert answer["field"] == field and answer["message"].startswith(field + ":")
    assert words in answer["message"]
    for foreign in ("Expected", "sqlite", "fts5", "query:"):
        assert foreign not in answer["message"], answer["message"]


# ------------------------------------------------------------------------------ events
def test_events_newest_first_paged_without_gaps(site: Site) -> None:
    """Walking ``next`` with limit=10 returns every stored event once, newest first, the
    same seqs as the table."""
    seen: list[int] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 10}
        if before is not None:
            params["before"] = before
        page = site.json("/api/events", params)
        assert len(page["events"]) == 10 or page["next"] is None
        seen += [e["seq"] for e in page["events"]]
        before = page["next"]
        if before is None:
            break
    stored = [seq for (seq,) in site.rows("SELECT seq FROM events ORDER BY seq DESC")]
    assert seen == stored[:len(seen)] and len(stored) >= SEEDED and len(seen) == len(stored)


@pytest.mark.parametrize(("params", "expect"), [
    ({"type": "kairo.door.*"}, "SELECT count(*) FROM events WHERE type GLOB 'kairo.door.*'"),
    ({"type": "kairo.door.opened,kairo.test.xss"},
     "SELECT count(*) FROM events WHERE type IN ('kairo.door.opened', 'kairo.test.xss')"),
    ({"source": "door-sensor"}, "SELECT count(*) FROM events WHERE source = 'door-sensor'"),
    ({"topic": "kairo/door/+"}, "SELECT count(*) FROM events WHERE topic LIKE 'kairo/door/%'"),
    ({"correlation_id": "order-77"}, "SELECT count(*) FROM events WHERE correlation_id = 'order-77'"),
    ({"since": "1h"}, "SELECT count(*) FROM events"),
    ({"until": "2000-01-01T00:00:00Z"}, "SELECT 0"),
])
def test_event_filters_match_the_query_op(site: Site, params: dict[str, str], expect: str) -> None:
    """Each filter of the form (type globs and lists, source, topic filter, correlation id,
    relative and RFC 3339 times) selects the events SQL selects."""
    page = site.json("/api/events", {**params, "limit": 500})
    (count,) = site.rows(expect)[0]
    assert len(page["events"]) == count and page["next"] is None
    if "type" in params and "," not in params["type"]:
        assert count == DOORS and {e["type"] for e in page["events"]} == {"kairo.door.opened"}


def test_event_json_keeps_hostile_text_as_data(site: Site) -> None:
    """An event's full JSON comes back byte-exact as JSON (application/json, nosniff, a CSP
    without inline script): markup in a payload is a string, never a page."""
    status, headers, body = site.get("/api/event", {"id": XSS_ID})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    event = json.loads(body)
    assert event["payload"] == {"html": XSS_TEXT} and event["source"] == "<b>hostile</b>"
    status, headers, page = site.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"<script>" not in page  # the one script is a file: script-src 'self' holds


def test_console_script_writes_no_markup() -> None:
    """console.js never turns data into markup: no innerHTML/outerHTML/insertAdjacentHTML/
    document.write/eval (what an XSS would go through); the pages have no inline script or
    style (the CSP would block them)."""
    script = re.sub(r"//[^\n]*", "", (STATIC / "console.js").read_text())  # code, not comments
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "setAttribute(\"style"):
        assert sink not in script, sink
    for page in ("console.html", "login.html"):
        text = (STATIC / page).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), page
        assert " style=" not in text and "<style" not in text, page
        assert not re.search(r"\son[a-z]+\s*=", text), page


# ------------------------------------------------------------------------------ tail
def test_tail_cursor_follows_new_events_without_skipping(site: Site) -> None:
    """/api/tail without ``after`` gives the newest seq; after events are published, polling
    from it with limit=2 returns each new event once, in seq order, ``more`` while behind."""
    start = site.json("/api/tail")
    assert start["events"] == [] and start["cursor"] == site.rows("SELECT max(seq) FROM events")[0][0]
    site.publish(event_messages(5, prefix="tail"))
    got: list[dict[str, Any]] = []
    cursor = start["cursor"]

    def poll() -> bool:
        nonlocal cursor
        page = site.json("/api/tail", {"after": cursor, "limit": 2})
        got.extend(page["events"])
        assert page["cursor"] == (page["events"][-1]["seq"] if page["events"] else cursor)
        cursor = page["cursor"]
        return len(got) >= 5

    wait_until(poll, timeout=20, message="5 tailed events")
    assert [e["id"] for e in got] == [f"tail-{i:06d}" for i in range(5)]
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    filtered = site.json("/api/tail", {"after": start["cursor"], "type": "kairo.door.*"})
    assert filtered["events"] == [] and filtered["cursor"] == start["cursor"]


# ------------------------------------------------------------------------------ chart
def test_chart_counts_match_the_database(site: Site) -> None:
    """The chart's buckets add up, per type, to the events SQL counts in its range; the
    series are the busiest types first; a range not offered is refused naming ``range``."""
    chart = site.json("/api/chart", {"range": "1h"})
    assert chart["bucket_ms"] == 60_000 and chart["until"] - chart["since"] == 3_600_000
    by_type = dict(site.rows(
        f"SELECT type, count(*) FROM events WHERE created_at >= {chart['since']} "
        f"AND created_at < {chart['until']} GROUP BY type"))
    assert {s["type"]: s["total"] for s in chart["series"]} == by_type
    for s in chart["series"]:
        assert len(s["counts"]) == 60 and sum(s["counts"]) == s["total"]
    totals = [s["total"] for s in chart["series"]]
    assert totals == sorted(totals, reverse=True)
    status, _, body = site.get("/api/chart", {"range": "1y"})
    assert status == 400 and json.loads(body)["field"] == "range"


# ------------------------------------------------------------------------------ dead letters
def test_dead_letters_with_their_reasons(site: Site) -> None:
    """Dead letters come newest first with the reason stored; one dead letter shows its
    payload as text (UTF-8) or base64; paging by ``before`` reaches the older one."""
    first = site.json("/api/dead-letters", {"limit": 1})
    assert len(first["letters"]) == 1 and first["next"] is not None
    second = site.json("/api/dead-letters", {"limit": 1, "before": first["next"]})
    stored = site.rows("SELECT id, reason FROM dead_letters ORDER BY id DESC")
    listed = first["letters"] + second["letters"]
    assert [(d["id"], d["reason"]) for d in listed] == stored
    assert second["next"] is None
    letters = {d["id"]: site.json("/api/dead-letter", {"id": d["id"]}) for d in listed}
    encodings = sorted(d["encoding"] for d in letters.values())
    assert encodings == ["base64", "utf-8"]
    text = next(d for d in letters.values() if d["encoding"] == "utf-8")
    assert text["payload"].startswith("not json <script>")
    assert site.get("/api/dead-letter", {"id": 999_999})[0] == 404


# ------------------------------------------------------------------------------ health
def test_health_figures_are_the_stores(site: Site) -> None:
    """/api/health has /healthz's verdict and the store's figures: event and dead-letter
    counts as in the table, the file's size."""
    figures = site.json("/api/health")
    assert figures["health"]["healthy"] is True and figures["health"]["writer_alive"] is True
    assert figures["events_total"] == site.rows("SELECT count(*) FROM events")[0][0]
    assert figures["dead_letters_total"] == 2
    assert figures["database_bytes"] == site.db.stat().st_size


# ------------------------------------------------------------------------------ bounds
@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/events", {"limit": "0"}, "limit"),
    ("/api/events", {"limit": "501"}, "limit"),
    ("/api/events", {"limit": "ten"}, "limit"),
    ("/api/events", {"before": "-3"}, "before"),
    ("/api/events", {"before": "99999999999999999999"}, "before"),
    ("/api/events", {"since": "last tuesday"}, "since"),
    ("/api/events", {"until": "2026-13-45T99:00:00Z"}, "until"),
    ("/api/events", {"since": "1h", "until": "2h"}, "until"),
    ("/api/events", {"topic": "kairo/#/x"}, "topic"),
    ("/api/events", {"type": "kairo.[ab]*"}, "type"),
    ("/api/events", {"type": "x" * 1025}, "type"),
    ("/api/events", {"where": "payload.a"}, "where"),
    ("/api/events", {"order": "asc"}, "order"),
    ("/api/events", {"limit": ["1", "2"]}, "limit"),
    ("/api/event", {}, "id"),
    ("/api/event", {"id": "x" * 300}, "id"),
    ("/api/tail", {"after": "x"}, "after"),
    ("/api/dead-letters", {"topic": "a/#/b"}, "topic"),
    ("/api/dead-letter", {"id": "one"}, "id"),
    ("/api/health", {"x": "1"}, "x"),
])
def test_bad_parameters_are_400_naming_the_parameter(site: Site, path: str,
                                                     params: dict[str, Any], field: str) -> None:
    """A bad parameter is a 400 whose JSON names it, in our words (no msgspec or SQLite text)."""
    status, _, body = site.get(path, params)
    assert status == 400, (status, body)
    answer = json.loads(body)
    assert answer["field"] == field and answer["message"].startswith(field)
    assert "Expected" not in answer["message"] and "sqlite" not in answer["message"].lower()


def test_hostile_requests_get_4xx(site: Site) -> None:
    """A huge query string is 414, too many parameters 400, a path outside the route table
    (traversal, encoded or not) 404; the listener still answers afterwards."""
    assert site.get("/api/events", {"type": "a" * 5000})[0] == 414
    assert site.get("/api/events", {f"p{i}": "1" for i in range(40)})[0] == 400
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/static/console.js/../../app.py", "//etc/passwd", "/static/login.html"):
        assert _raw(site, "GET", path, headers={"authorization": f"Bearer {TOKEN}"})[0] == 404, path
    assert site.get("/api/health")[0] == 200


def test_the_style_sheet_alone_is_public(site: Site) -> None:
    """The login form's style sheet loads without the token (it holds nothing of the store);
    the script and every JSON path do not."""
    status, headers, _ = _raw(site, "GET", "/static/console.css")
    assert status == 200 and headers["content-type"].startswith("text/css")
    assert _raw(site, "GET", "/static/console.js")[0] == 401


def test_console_off_serves_metrics_only(tmp_path: Path, broker: Broker) -> None:
    """``[http] console = false``: / and /api/* are 404; /metrics and /healthz still answer."""
    run = Running(env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}",
                          http__console="false")).start()
    try:
        assert get(run.base + "/")[0] == 404
        assert get(run.base + "/api/events")[0] == 404
        assert get(run.base + "/healthz")[0] == 200
        assert get(run.base + "/metrics")[0] == 200
    finally:
        run.stop()


def test_the_wheel_ships_the_console(tmp_path: Path) -> None:
    """A wheel built from the tree holds every file of sidecar/http/static (package data in
    pyproject.toml): a console installed from it has its page, script and style."""
    import subprocess
    import sys
    import zipfile

    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                             "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("kairo_sidecar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"sidecar/http/static/{p.name}" for p in STATIC.iterdir() if p.is_file()}
    assert shipped and shipped <= names, shipped - names
