"""``latest``, path indexes and ``unindexed_where`` end to end: a real Mosquitto, an in-process
sidecar with ``[indexes] paths = ["payload.name"]``, on a real SQLite file and on a real
PostgreSQL; asked over MQTT 5 and 3.1.1, through ``SidecarClient`` (JSON and MessagePack) and
the CLI (broker and ``--db``)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import SidecarClient
from sidecar.core import paths
from sidecar.errors import RequestError
from tests.conftest import ENGINES, ROOT, engine_database, wait_until
from tests.support.broker import Broker
from tests.support.inprocess import Running, daemon, start_inprocess
from tests.support.publisher import Message, publish_all

PLUGIN = "kairo.plugin.state"


@pytest.fixture(scope="module", params=ENGINES)
def sidecar(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Running]]:
    """The sidecar on each engine (every test of the module runs on both)."""
    tmp = tmp_path_factory.mktemp("latest")
    for url in engine_database(request, request.param, tmp):
        with daemon(tmp, url=url, INDEXES__PATHS='["payload.name"]') as d:
            yield d.broker, d.run


def path_indexes(run: Running) -> set[str]:
    """The names of the path indexes of the sidecar's database."""
    if run.url is not None and not run.url.startswith("sqlite:"):
        sql = "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'events_path_%%'"
    else:
        sql = "SELECT name FROM sqlite_master WHERE name LIKE 'events_path_%'"
    return {r[0] for r in run.rows(sql)}


def newest_per_name(run: Running, event_type: str) -> dict[str, str]:
    """The newest event id per ``payload.name`` of ``event_type``, folded in Python."""
    newest: dict[str, str] = {}
    for event_id, payload in run.rows("SELECT id, payload FROM events WHERE type = ? "
                                      "ORDER BY seq", event_type):
        body = payload if isinstance(payload, dict) else json.loads(payload)
        if body.get("name") is not None:
            newest[body["name"]] = event_id
    return newest


def plugin_states(n: int, *, seed: int) -> tuple[list[Message], dict[str, str]]:
    """``n`` plugin state changes over 60 plugins (several each), plus alerts that share the
    ``name`` path and messages without it; and the newest state id per plugin."""
    rng = random.Random(seed)
    msgs: list[Message] = []
    newest: dict[str, str] = {}
    for i in range(n):
        name = f"plugin-{rng.randrange(60):02d}"
        event_id = f"ps-{seed}-{i:05d}"
        body = {"id": event_id, "type": PLUGIN, "source": "app",
                "payload": {"name": name, "enabled": i % 2 == 0}}
        msgs.append(Message(event_id, "kairo/plugin/state", json.dumps(body).encode()))
        newest[name] = event_id
        if i % 5 == 0:
            alert = {"id": f"al-{seed}-{i:05d}", "type": "kairo.alert.raised", "source": "app",
                     "payload": {"name": name, "fingerprint": f"fp-{i}"}}
            msgs.append(Message(alert["id"], "kairo/alert", json.dumps(alert).encode()))
    return msgs, newest


def stored(run: Running) -> int:
    return int(run.rows("SELECT count(*) FROM events")[0][0])


def test_latest_over_mqtt_pages_every_plugin_once_with_its_newest_state(sidecar):
    """Through the client (MQTT 5 JSON, 3.1.1 MessagePack), paged 7 keys at a time: each plugin
    once, in name order, with its newest state; ``indexed`` is true (payload.name is listed)."""
    broker, run = sidecar
    msgs, newest = plugin_states(600, seed=1)
    before = stored(run)
    assert len(publish_all(broker.host, broker.port, msgs)) == len(msgs)
    wait_until(lambda: stored(run) == before + len(msgs))
    for kwargs in ({}, {"protocol": "3.1.1", "encoding": "msgpack"}):
        client = SidecarClient(broker.host, broker.port, **kwargs).connect()
        try:
            page = client.latest("payload.name", type="kairo.plugin.*", limit=7)
            assert page.indexed is True and len(page.events) == 7 and page.next == "plugin-06"
            events = list(client.latest_all("payload.name", type="kairo.plugin.*", limit=7))
        finally:
            client.close()
        assert [e["payload"]["name"] for e in events] == sorted(newest)
        assert {e["payload"]["name"]: e["id"] for e in events} == newest


def test_query_answer_names_the_where_keys_no_index_served(sidecar):
    """A where on payload.name is served by its index (no flag); payload.fingerprint is not
    listed, so the answer says it ran without an index."""
    broker, run = sidecar
    msgs, _ = plugin_states(50, seed=2)
    assert len(publish_all(broker.host, broker.port, msgs)) == len(msgs)
    wait_until(lambda: run.rows("SELECT count(*) FROM events WHERE id = 'ps-2-00049'")[0][0] == 1)
    client = SidecarClient(broker.host, broker.port).connect()
    try:
        page = client.query(where={"payload.name": "plugin-01"}, limit=5)
        assert page.unindexed_where is None
        page = client.query(where={"payload.fingerprint": "fp-5", "payload.name": "plugin-01"})
        assert page.unindexed_where == ["payload.fingerprint"]
        with pytest.raises(RequestError) as caught:
            client.latest("name", type=PLUGIN)
        assert caught.value.code == "bad_request" and caught.value.field == "key"
        with pytest.raises(RequestError) as caught:
            client.latest("payload.name", limit=0)
        assert caught.value.field == "limit"
    finally:
        client.close()
    assert paths.parse("payload.name").index_name in path_indexes(run)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})


def test_cli_latest_through_broker_and_db_and_where_hint(sidecar):
    """``kairo-sidecar latest`` prints each key's newest event, through the broker and with
    --db; ``query --where`` on an unindexed path prints the hint on stderr."""
    broker, run = sidecar
    msgs, _ = plugin_states(80, seed=3)
    assert len(publish_all(broker.host, broker.port, msgs)) == len(msgs)
    wait_until(lambda: run.rows("SELECT count(*) FROM events WHERE id = 'ps-3-00079'")[0][0] == 1)
    expected = newest_per_name(run, PLUGIN)
    on_broker = ["--host", broker.host, "--port", str(broker.port)]
    db = run.url or str(run.db_path)
    for where in (on_broker, ["--db", db]):
        done = cli("latest", "payload.name", "--type", PLUGIN, "--limit", "9", "--all", *where)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert {e["payload"]["name"]: e["id"] for e in lines} == expected
        assert "hint" not in done.stderr
    done = cli("query", "--where", "payload.fingerprint=fp-0", *on_broker)
    assert done.returncode == 0 and "without an index" in done.stderr
    done = cli("latest", "payload.fingerprint", "--limit", "3", "--db", db)
    assert done.returncode == 0 and "has no index" in done.stderr and "next:" in done.stderr
    done = cli("latest", "nope", *on_broker)
    assert done.returncode == 2 and "key" in done.stderr


def test_restart_with_a_path_removed_drops_its_index(tmp_path: Path, broker: Broker,
                                                     engine_url: str):
    """Listed paths get their index at start; started again without them, the index is gone."""
    run = start_inprocess(tmp_path, broker, url=engine_url,
                          INDEXES__PATHS='["payload.a", "metadata.b[0]"]')
    run.sidecar.request_stop()
    run.thread.join(15)
    assert path_indexes(run) == {paths.parse("payload.a").index_name,
                                 paths.parse("metadata.b[0]").index_name}
    run = start_inprocess(tmp_path, broker, url=engine_url, INDEXES__PATHS='["payload.a"]')
    run.sidecar.request_stop()
    run.thread.join(15)
    assert path_indexes(run) == {paths.parse("payload.a").index_name}
