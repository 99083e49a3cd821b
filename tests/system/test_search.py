"""Full-text search end to end: a real Mosquitto, an in-process sidecar with ``[search]`` on
over a real SQLite file that already held events (the daemon indexes them in the background),
the ``search`` op through the Python client and the CLI (through the broker and ``--db``), and
a sidecar with search off. PostgreSQL (a GIN index) answers the same op
(tests/unit/api/test_hostile_requests.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import SidecarClient
from sidecar.errors import RequestError
from tests.conftest import ROOT, wait_until
from tests.support.broker import Broker
from tests.support.inprocess import Daemon, daemon, start_inprocess
from tests.support.publisher import Message, Publisher
from tests.support.seed import create_db, event

SEEDED = 3000


class Env(Daemon):
    def publish(self, events: list[dict[str, Any]]) -> None:
        msgs = [Message(e["id"], f"kairo/{e['type'].replace('.', '/')}", json.dumps(e).encode())
                for e in events]
        with Publisher(self.broker.host, self.broker.port) as pub:
            pub.publish(msgs)
            pub.wait_all(60)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A sidecar with search on, started on a file that already holds ``SEEDED`` events."""
    tmp = tmp_path_factory.mktemp("search")
    create_db(tmp / "kairo.db", [event(i, type="kairo.archive.item") for i in range(SEEDED)])
    with daemon(tmp, SEARCH__ENABLED="true", SEARCH__BACKFILL_BATCH="500") as d:
        yield Env(d.broker, d.run)


def note(i: int, tag: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"{tag}-{i:05d}", "type": f"kairo.{tag}.note", "source": extra.pop("source", "pi"),
            "payload": {"text": text, "i": i, **extra}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})


def test_existing_events_are_indexed_in_the_background(env: Env, client: SidecarClient):
    """The daemon backfills the events stored before search was on, between write batches;
    once ``complete`` every one of them is found."""
    wait_until(lambda: client.search("archive", limit=1).complete, timeout=60,
               message="the backfill to complete")
    found = list(client.search_all('"row e"', limit=500, order="asc", type="kairo.archive.*"))
    assert len(found) == SEEDED
    assert [h["event"]["id"] for h in found[:2]] == ["e-0000000", "e-0000001"]
    assert env.run.rows("SELECT count(*) FROM events")[0][0] >= SEEDED


def test_an_event_is_searchable_as_soon_as_it_is_queryable(env: Env, client: SidecarClient):
    """While 400 events arrive, every look finds by search at least what query found just
    before it (the index is written in the event's own transaction), and finally all."""
    events = [note(i, "live", f"kettle boiling {i}") for i in range(400)]
    sender = threading.Thread(target=env.publish, args=(events,))
    sender.start()
    looks = []
    while sender.is_alive() or not looks or looks[-1][0] < 400:
        queried = len(list(client.query_all(type="kairo.live.note", limit=1000)))
        searched = len(list(client.search_all("kettle", limit=1000, type="kairo.live.note")))
        looks.append((queried, searched))
        assert searched >= queried, looks
    sender.join()
    assert looks[-1] == (400, 400)


def test_phrases_prefixes_filters_ranking_and_paging(env: Env, client: SidecarClient):
    """Over MQTT: a phrase, a prefix, NOT, a field, filters combined, the best match first,
    snippets with the asked marks, and ``search_all`` walking ranked pages without a repeat."""
    env.publish([note(0, "find", "the boiler pressure is low"),
                 note(1, "find", "boiler boiler boiler", source="cellar"),
                 note(2, "find", "boiling water for tea", correlation="wf"),
                 note(3, "find", "pressure low in the boiler"),
                 *[note(i, "find", f"boilerplate text {i}") for i in range(4, 40)]])
    wait_until(lambda: len(list(client.query_all(type="kairo.find.note"))) == 40)
    ids = lambda page: [h["event"]["id"] for h in page.hits]  # noqa: E731
    assert ids(client.search('"boiler pressure"', type="kairo.find.*")) == ["find-00000"]
    best = client.search("boiler", type="kairo.find.*", highlight=("<b>", "</b>"))
    assert ids(best)[0] == "find-00001" and "<b>boiler</b>" in best.hits[0]["snippet"]
    assert sorted(ids(client.search("boiler NOT pressure", type="kairo.find.*"))) == ["find-00001"]
    assert ids(client.search("boil* AND tea")) == ["find-00002"]
    assert ids(client.search("boiler", type="kairo.find.*", source="cellar")) == ["find-00001"]
    assert ids(client.search("source:cellar")) == ["find-00001"]
    prefix = list(client.search_all("boil*", limit=7, type="kairo.find.*"))
    assert len(prefix) == 40 and len({h["event"]["id"] for h in prefix}) == 40
    ranks = [h["rank"] for h in prefix]
    assert ranks == sorted(ranks)
    newest = client.search("boil*", order="desc", limit=3, type="kairo.find.*")
    assert ids(newest) == ["find-00039", "find-00038", "find-00037"]
    assert newest.next == newest.hits[-1]["event"]["seq"]


def test_malformed_queries_are_bad_requests_naming_the_query(client: SidecarClient):
    """A quote left open, NOT with nothing before it, a NUL: bad_request on ``query``, in our
    words; a hostile but well-formed string is simply searched."""
    for text, words in (('"disk full', "quote"), ("NOT disk", "NOT needs a term"),
                        ("a\x00b", "NUL"), ("(a OR", "term")):
        with pytest.raises(RequestError) as err:
            client.search(text)
        assert err.value.code == "bad_request" and err.value.field == "query"
        assert words in err.value.message and "fts5" not in err.value.message.lower()
    assert client.search("NEAR(x y) col:z ^q rowid:1").hits == []


def test_cli_search_through_the_broker_and_the_file(env: Env):
    """``kairo-sidecar search`` prints hits as JSON lines through the broker and with --db;
    ``search-index status`` and ``check`` read the file; a malformed query exits 2."""
    env.publish([note(i, "clisearch", f"gateway timeout {i}") for i in range(6)])
    wait_until(lambda: env.run.rows("SELECT count(*) FROM events WHERE type = ?",
                                    "kairo.clisearch.note")[0][0] == 6)
    broker = ["--host", env.broker.host, "--port", str(env.broker.port)]
    done = cli("search", "gateway", "--type", "kairo.clisearch.*", "--order", "asc",
               "--limit", "4", "--all", *broker)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [h["event"]["id"] for h in lines] == [f"clisearch-{i:05d}" for i in range(6)]
    assert "[gateway]" in lines[0]["snippet"]
    done = cli("search", "timeout", "--type", "kairo.clisearch.*", "--limit", "2", "--db",
               str(env.run.db_path))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2 and "next:" in done.stderr
    done = cli("search", '"open', *broker)
    assert done.returncode == 2 and "query: a quote" in done.stderr
    done = cli("search-index", "status", "--db", str(env.run.db_path))
    assert done.returncode == 0 and "search: on" in done.stdout, done.stderr


def test_search_off_is_a_clear_error(tmp_path: Path, broker: Broker):
    """A sidecar without [search] answers ``search_disabled`` saying how to turn it on."""
    run = start_inprocess(tmp_path, broker)
    try:
        client = SidecarClient(broker.host, broker.port).connect()
        try:
            with pytest.raises(RequestError) as err:
                client.search("anything")
            assert err.value.code == "search_disabled" and "[search] enabled" in err.value.message
        finally:
            client.close()
    finally:
        run.sidecar.request_stop()
        run.thread.join(15)
