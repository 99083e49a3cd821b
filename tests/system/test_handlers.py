"""The request API end to end: a real Mosquitto, one in-process sidecar for the module, a real
SQLite file; requesters over MQTT 5 (Response Topic + Correlation Data) and 3.1.1 (reply_to +
transaction), the Python client and the CLI. Each test uses its own event ids/types, so they
share the sidecar without seeing each other's events."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sidecar.api.handlers import Handlers
from sidecar.api.protocol import RequestMessage
from sidecar.client import SidecarClient
from sidecar.config import DatabaseConfig
from sidecar.errors import RequestError
from tests.conftest import ENGINES, ROOT, engine_database, wait_until
from tests.support.broker import Broker
from tests.support.inprocess import Daemon, Running, daemon, start_inprocess
from tests.support.publisher import Message, Publisher
from tests.support.stores import Store

MAX_STREAMS = 2


class Env(Daemon):
    @property
    def handlers(self) -> Handlers:
        handlers = self.run.sidecar.handlers
        assert handlers is not None
        return handlers


@pytest.fixture(scope="module", params=ENGINES)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A sidecar in this process on each engine (every test here runs on SQLite and PostgreSQL)."""
    tmp = tmp_path_factory.mktemp("api")
    for url in engine_database(request, request.param, tmp):
        with daemon(tmp, url=url, API__MAX_STREAMS=str(MAX_STREAMS),
                    API__MAX_REQUEST_BYTES="4096") as d:
            yield Env(d.broker, d.run)


def event(i: int, tag: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"{tag}-{i:06d}", "type": f"kairo.{tag}.event", "source": "test",
            "payload": {"i": i, "tag": tag, **extra},
            "metadata": {"correlationId": f"corr-{tag}"}}


def messages(n: int, tag: str, *, start: int = 0) -> list[Message]:
    return [Message(f"{tag}-{i:06d}", f"kairo/{tag}/{i % 3}",
                    json.dumps(event(i, tag)).encode()) for i in range(start, start + n)]


def publish(env: Env, msgs: list[Message]) -> None:
    with Publisher(env.broker.host, env.broker.port) as pub:
        pub.publish(msgs)
        pub.wait_all(60)


def stored(env: Env, tag: str) -> int:
    return env.run.rows("SELECT count(*) FROM events WHERE type = ?", f"kairo.{tag}.event")[0][0]


class Requester:
    """A bare paho requester that records every answer on the topics it listens to."""

    def __init__(self, broker: Broker, *, v5: bool = True, listen: str = "reply/#") -> None:
        self.v5 = v5
        self.answers: list[tuple[str, Any, Any]] = []  # (topic, decoded body, properties)
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=(
            MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311))
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(listen, 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        raw = msg.payload
        try:
            body = json.loads(raw)
        except ValueError:
            body = msgspec.msgpack.decode(raw)
        with self._lock:
            self.answers.append((msg.topic, body, getattr(msg, "properties", None)))

    def send(self, op: str, body: bytes | dict[str, Any], *, response_topic: str | None = None,
             correlation: bytes | None = None, content_type: str | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if content_type:
                props.ContentType = content_type
        self.client.publish(f"kairo-sidecar/request/{op}", payload, qos=1,
                            properties=props).wait_for_publish(10)

    def on(self, topic: str, count: int = 1) -> list[tuple[str, Any, Any]]:
        def found() -> list[tuple[str, Any, Any]] | None:
            with self._lock:
                hits = [a for a in self.answers if a[0] == topic]
            return hits if len(hits) >= count else None
        hits = wait_until(found, message=f"{count} answer(s) on {topic}")
        assert isinstance(hits, list)
        return hits

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------ routing
def test_mqtt5_answer_goes_to_response_topic_with_correlation_data(env: Env):
    """An MQTT 5 request is answered on its Response Topic with its Correlation Data echoed."""
    publish(env, messages(2, "v5"))
    wait_until(lambda: stored(env, "v5") == 2)
    req = Requester(env.broker)
    try:
        req.send("get", {"id": "v5-000001"}, response_topic="reply/v5/a", correlation=b"\x00c-1")
        (_, body, props), = req.on("reply/v5/a")
        assert props.CorrelationData == b"\x00c-1"
        assert props.ContentType == "application/json"
        assert body["status"] == "ok" and "transaction" not in body
        data = body["data"]
        assert (data["id"], data["type"], data["payload"]) == (
            "v5-000001", "kairo.v5.event", {"i": 1, "tag": "v5"})
        assert set(data) == {"seq", "id", "topic", "type", "source", "payload", "metadata",
                             "created_at", "received_at"}
    finally:
        req.close()


def test_mqtt311_answer_goes_to_reply_to_with_transaction(env: Env):
    """A 3.1.1 request is answered on its reply_to, echoing transaction (also on errors)."""
    publish(env, messages(3, "v3"))
    wait_until(lambda: stored(env, "v3") == 3)
    req = Requester(env.broker, v5=False)
    try:
        req.send("query", {"type": "kairo.v3.event", "limit": 2, "reply_to": "reply/v3",
                           "transaction": 42})
        req.send("query", {"limit": "two", "reply_to": "reply/v3/err", "transaction": "t-x"})
        (_, body, _), = req.on("reply/v3")
        assert body["transaction"] == 42 and body["status"] == "ok"
        assert [e["id"] for e in body["data"]["events"]] == ["v3-000000", "v3-000001"]
        assert body["data"]["next"] == body["data"]["events"][-1]["seq"]
        (_, err, _), = req.on("reply/v3/err")
        assert err == {"status": "error", "transaction": "t-x", "error": {
            "code": "bad_request", "message": "limit: expected an integer, got a string",
            "field": "limit"}}
    finally:
        req.close()


def test_request_without_destination_is_answered_on_default_topic(env: Env):
    """No Response Topic and no reply_to: the answer goes to kairo-sidecar/response/<op>."""
    req = Requester(env.broker, v5=False, listen="kairo-sidecar/response/#")
    try:
        req.send("stats", b"")
        (_, body, _), = req.on("kairo-sidecar/response/stats")
        stats = body["data"]
        assert stats["version"] and stats["uptime_s"] > 0
        assert stats["events_total"] == env.run.rows("SELECT count(*) FROM events")[0][0]
        assert stats["database_bytes"] > 0 and stats["queue_depth"] >= 0
        for key in ("duplicates", "dead_letters", "qos0_dropped", "last_commit_lag_ms",
                    "oldest_event_at", "newest_event_at", "wal_bytes", "events_stored"):
            assert key in stats
    finally:
        req.close()


def test_msgpack_request_gets_msgpack_answer(env: Env):
    """A MessagePack request is answered in MessagePack, with the payload as a map."""
    publish(env, messages(1, "mp"))
    wait_until(lambda: stored(env, "mp") == 1)
    req = Requester(env.broker)
    try:
        req.send("get", msgspec.msgpack.encode({"id": "mp-000000"}), response_topic="reply/mp")
        (_, body, props), = req.on("reply/mp")
        assert props.ContentType == "application/msgpack"
        assert body["data"]["payload"] == {"i": 0, "tag": "mp"}
    finally:
        req.close()


# ------------------------------------------------------------------------------ bad requests
BAD = [
    ("query", b'{"bogus": 1}', "bad_request", "bogus"),
    ("query", b'{"limit": "x"}', "bad_request", "limit"),
    ("query", b'{"limit": 5000}', "bad_request", "limit"),
    ("query", b'{"type": "kairo.[x*"}', "bad_request", "type"),
    ("query", b'{"topic": "a/#/b"}', "bad_request", "topic"),
    ("query", b'{"since": "soon"}', "bad_request", "since"),
    ("query", b'{"where": {"nope": 1}}', "bad_request", "where.nope"),
    ("query", b'{"limit": ', "bad_request", None),
    ("get", b"{}", "bad_request", "id"),
    ("get", b'{"id": "no-such-event"}', "not_found", "id"),
    ("replay", b'{"batch": 100000}', "bad_request", "batch"),
    ("replay", b'{"rate": 0}', "bad_request", "rate"),
    ("replay", b'{"max_duration": 999999}', "bad_request", "max_duration"),
    ("replay", b'{"pace": "fast"}', "bad_request", "pace"),
    ("replay/cancel", b'{"stream": "nope"}', "not_found", "stream"),
    ("frobnicate", b"{}", "unknown_op", None),
    ("query", b'{"type": "' + b"a" * 5000 + b'"}', "too_large", None),
]


def test_each_kind_of_malformed_request_gets_its_error_answer(env: Env):
    """Unknown fields, wrong types, limits, bad globs/filters, unknown ops, size: error answers."""
    req = Requester(env.broker)
    try:
        for i, (op, body, _, _) in enumerate(BAD):
            req.send(op, body, response_topic=f"reply/bad/{i}")
        for i, (op, _, code, field) in enumerate(BAD):
            (_, answer, _), = req.on(f"reply/bad/{i}")
            assert answer["status"] == "error", (op, answer)
            assert answer["error"]["code"] == code, (i, op, answer)
            assert answer["error"].get("field") == field, (i, op, answer)
            assert answer["error"]["message"]
    finally:
        req.close()


def test_requests_that_cannot_be_answered_are_dropped(env: Env):
    """A reply_to that is no topic name, or one the sidecar stores or serves, is not answered."""
    before = env.handlers.dropped
    req = Requester(env.broker, v5=False, listen="kairo-sidecar/response/#")
    try:
        req.send("stats", {"reply_to": "kairo/looped"})  # would be stored as an event
        req.send("stats", {"reply_to": "a/+/b"})  # a filter, not a topic
        req.send("stats", {"reply_to": 7})
        req.send("stats", {"reply_to": "kairo-sidecar/request/stats"})  # a request loop
        wait_until(lambda: env.handlers.dropped == before + 4, message="4 dropped requests")
        assert env.handlers.reply_for(RequestMessage("stats", b"", retain=True)) is None
        assert not req.answers
        assert env.run.rows("SELECT count(*) FROM events WHERE topic = 'kairo/looped'")[0][0] == 0
    finally:
        req.close()


# ------------------------------------------------------------------------------ query, replay
def test_paginating_5000_events_while_ingest_runs_returns_each_once(env: Env, client):
    """Walking `next` (then the last seq) while 5,000 events arrive yields each exactly once."""
    expected = {f"pg-{i:06d}" for i in range(5000)}
    seen: list[str] = []
    cursor = None
    with Publisher(env.broker.host, env.broker.port) as pub:
        pub.publish_in_background(messages(5000, "pg"), max_pending=200)
        deadline = time.monotonic() + 90
        while len(seen) < 5000 and time.monotonic() < deadline:
            page = client.query(type="kairo.pg.event", limit=100, after=cursor)
            seen.extend(e["id"] for e in page.events)
            if page.events:
                cursor = page.events[-1]["seq"]
            assert page.next is None or page.next == cursor
        pub.wait_all(30)
    assert len(seen) == len(set(seen)) == 5000
    assert set(seen) == expected


def seed(run: Running, n: int, tag: str) -> None:
    """Insert ``n`` events in one transaction beside the running writer."""
    Store("any", DatabaseConfig(url=run.url)).insert_events([
        {"id": f"{tag}-{i:06d}", "topic": f"kairo/{tag}", "type": f"kairo.{tag}.event",
         "source": "seed", "payload": json.dumps({"i": i, "pad": "x" * 100}), "metadata": "{}",
         "created_at": 1_700_000_000_000 + i, "received_at": 1_700_000_000_000 + i,
         "correlation_id": f"corr-{tag}"} for i in range(n)])


def test_replay_of_20000_events_is_complete_and_in_order(env: Env, client):
    """A replay streams all 20,000 matching events once, in seq order, then done with count."""
    seed(env.run, 20_000, "rp")
    started = time.perf_counter()
    replay = client.replay(correlation_id="corr-rp", batch=100)
    events = list(replay)
    seconds = time.perf_counter() - started
    assert [e["id"] for e in events] == [f"rp-{i:06d}" for i in range(20_000)]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20_000
    assert replay.done is not None
    assert (replay.done["count"], replay.done["last"], replay.done["reason"]) == (
        20_000, seqs[-1], "complete")
    print(f"replayed 20000 events in {seconds:.2f}s ({20_000 / seconds:,.0f} events/s)")


def _consume(replay: Any, into: list[dict[str, Any]]) -> threading.Thread:
    def run() -> None:
        for message in replay.messages():
            into.append(message)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_live_replay_forwards_new_events_after_caught_up_until_cancelled(env: Env, client):
    """A live replay sends the stored events, caught_up, then events published later; cancel
    ends it with done (reason cancelled)."""
    publish(env, messages(5, "lv"))
    wait_until(lambda: stored(env, "lv") == 5)
    replay = client.replay(type="kairo.lv.*", live=True, batch=10)
    got: list[dict[str, Any]] = []
    thread = _consume(replay, got)
    wait_until(lambda: replay.caught_up.is_set(), message="caught_up")
    marker = next(m for m in got if m.get("caught_up"))
    assert marker["last"] == got[0]["events"][-1]["seq"]
    publish(env, messages(20, "lv", start=5) + messages(3, "other"))
    wait_until(lambda: replay.count == 25, message="25 events through the live stream")
    client.cancel(replay.stream)
    thread.join(10)
    assert not thread.is_alive()
    ids = [e["id"] for m in got for e in m.get("events", ())]
    assert ids == [f"lv-{i:06d}" for i in range(25)]
    assert replay.done is not None
    assert (replay.done["reason"], replay.done["count"]) == ("cancelled", 25)
    wait_until(lambda: env.handlers.active_streams == 0, message="stream gone")


def test_max_streams_is_enforced(env: Env, client):
    """With max_streams running, one more replay is answered busy; after a cancel it starts."""
    wait_until(lambda: env.handlers.active_streams == 0, message="no stream left over")
    live = [client.replay(correlation_id="nothing-matches", live=True) for _ in range(MAX_STREAMS)]
    consumers = [_consume(r, []) for r in live]
    wait_until(lambda: all(r.caught_up.is_set() for r in live), message="streams caught up")
    with pytest.raises(RequestError) as info:
        list(client.replay(correlation_id="nothing-matches"))
    assert info.value.code == "busy"
    client.cancel(live[0].stream)
    consumers[0].join(10)
    wait_until(lambda: env.handlers.active_streams == MAX_STREAMS - 1)
    extra = client.replay(correlation_id="nothing-matches")
    assert list(extra) == [] and extra.done is not None and extra.done["reason"] == "complete"
    client.cancel(live[1].stream)
    consumers[1].join(10)
    assert all(r.done is not None and r.done["reason"] == "cancelled" for r in live)


def test_shutdown_ends_live_streams_with_done(tmp_path: Path, broker: Broker):
    """Stopping the sidecar ends a running live replay with done (reason shutdown), then exits."""
    run = start_inprocess(tmp_path, broker)
    client = SidecarClient(broker.host, broker.port).connect()
    try:
        replay = client.replay(type="kairo.none", live=True)
        got: list[dict[str, Any]] = []
        thread = _consume(replay, got)
        wait_until(lambda: replay.caught_up.is_set(), message="caught_up")
        run.sidecar.request_stop()
        run.thread.join(20)
        assert not run.thread.is_alive()
        thread.join(10)
        assert replay.done is not None and replay.done["reason"] == "shutdown"
    finally:
        client.close()
        run.sidecar.request_stop()
        run.thread.join(15)


# ------------------------------------------------------------------------------ client, CLI
def test_python_client_over_mqtt311(env: Env):
    """The client works over 3.1.1 (reply_to + transaction): query_all, get, not_found, replay."""
    publish(env, messages(30, "cl"))
    wait_until(lambda: stored(env, "cl") == 30)
    client = env.client(protocol="3.1.1", encoding="msgpack")
    try:
        ids = [e["id"] for e in client.query_all(topic="kairo/cl/+", limit=7)]
        assert ids == [f"cl-{i:06d}" for i in range(30)]
        assert [e["id"] for e in client.query_all(topic="kairo/cl/1", order="desc")] == [
            f"cl-{i:06d}" for i in range(28, 0, -3)]
        assert client.get("cl-000004")["payload"] == {"i": 4, "tag": "cl"}
        with pytest.raises(RequestError) as info:
            client.get("cl-missing")
        assert info.value.code == "not_found"
        replay = client.replay(where={"payload.tag": "cl"}, batch=8)
        assert [e["payload"]["i"] for e in replay] == list(range(30))
    finally:
        client.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})


def test_cli_query_get_replay_through_broker_and_db(env: Env):
    """query/get/replay print JSON lines, through the broker and with --db on the file."""
    publish(env, messages(12, "cli"))
    wait_until(lambda: stored(env, "cli") == 12)
    broker = ["--host", env.broker.host, "--port", str(env.broker.port)]
    expected = [f"cli-{i:06d}" for i in range(12)]

    done = cli("query", "--type", "kairo.cli.*", "--limit", "5", "--all", *broker)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == expected

    done = cli("query", "--type", "kairo.cli.*", "--limit", "5", "--db", env.run.db)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == expected[:5]
    assert "next:" in done.stderr

    done = cli("get", "cli-000003", *broker, "--protocol", "3.1.1")
    assert done.returncode == 0 and json.loads(done.stdout)["payload"]["i"] == 3

    done = cli("get", "cli-nope", "--db", env.run.db)
    assert done.returncode == 1 and "not_found" in done.stderr

    done = cli("replay", "--where", "payload.tag=cli", "--batch", "4", *broker)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == expected

    done = cli("replay", "--correlation-id", "corr-cli", "--db", env.run.db)
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == expected

    done = cli("query", "--type", "kairo.[x*", *broker)
    assert done.returncode == 2 and "bad_request" in done.stderr

    # The --db readers left the running sidecar's WAL in place (it is still in use).
    if env.run.url.startswith("sqlite:"):
        assert Path(str(env.run.db_path) + "-wal").exists()
    assert env.run.rows("SELECT count(*) FROM events")[0][0] >= 12


def test_requests_and_answers_are_never_stored(env: Env):
    """Requests and answers never become events (the API topics are outside kairo/#)."""
    c = env.client()
    try:
        for _ in range(3):
            c.stats()
        tag = f"mark{uuid.uuid4().hex[:6]}"
        publish(env, messages(1, tag))  # committed after the requests were answered
        wait_until(lambda: stored(env, tag) == 1)
        assert env.run.rows(
            "SELECT count(*) FROM events WHERE topic LIKE 'kairo-sidecar/%'")[0][0] == 0
    finally:
        c.close()
