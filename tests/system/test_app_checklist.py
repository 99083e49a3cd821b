"""The app's checklist end to end (issue 12): a real Mosquitto, the daemon as a process, a real
SQLite file, ``[indexes] paths`` and projections for plugin state and alerts. An app publishes
conversations, plugin state changes and alerts; the sidecar is SIGKILLed and restarted; the
app's reload gets everything back over MQTT requests and through ``sidecar.client``; a
retention purge keeps each plugin's last state and every kv entry; ``project rebuild`` after
the kv rows are deleted gives the same state."""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from sidecar.client import SidecarClient
from tests.conftest import SidecarProcess, count_rows, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Message, publish_all

CONVERSATIONS, MESSAGES = 3, 25
PLUGINS, CHANGES = 4, 5
ALERTS = 3
PROJECTIONS = [
    {"name": "plugins", "type": "kairo.plugin.state", "key": "plugin/{payload.name}"},
    {"name": "alerts", "type": "kairo.alert.*", "key": "alert/{payload.fingerprint}",
     "mode": "merge"},
]
SETTINGS = {
    "INDEXES__PATHS": json.dumps(["payload.conversation_id", "payload.fingerprint"]),
    "PROJECTIONS": json.dumps(PROJECTIONS),
    "WRITER__FLUSH_INTERVAL": "0.2",
}


def _event(event_id: str, event_type: str, topic: str, payload: dict[str, Any]) -> Message:
    body = {"id": event_id, "type": event_type, "source": "app", "payload": payload}
    return Message(event_id, topic, json.dumps(body).encode())


def _app_history() -> tuple[list[Message], dict[str, Any]]:
    """What the app publishes, interleaved, and what its reload must find."""
    msgs: list[Message] = []
    expect: dict[str, Any] = {"messages": {}, "plugins": {}, "alerts": {}}
    for n in range(MESSAGES):
        for c in range(CONVERSATIONS):
            conv = f"conv-{c}"
            mid = f"msg-{c}-{n:03d}"
            msgs.append(_event(mid, "kairo.chat.message", f"kairo/chat/{conv}",
                               {"conversation_id": conv, "role": "user" if n % 2 else "agent",
                                "text": f"message {n}"}))
            expect["messages"].setdefault(conv, []).append(mid)
        if n < CHANGES:
            for p in range(PLUGINS):
                state = {"name": f"plugin-{p}", "enabled": (n + p) % 2 == 0,
                         "config": {"level": n}}
                msgs.append(_event(f"ps-{p}-{n}", "kairo.plugin.state", "kairo/plugin/state",
                                   state))
                expect["plugins"][f"plugin-{p}"] = (state, f"ps-{p}-{n}")
        if n < ALERTS:
            fp = f"fp-{n}"
            msgs.append(_event(f"ar-{n}", "kairo.alert.raised", "kairo/alert",
                               {"fingerprint": fp, "raw": {"cpu": 90 + n}}))
            expect["alerts"][fp] = {"fingerprint": fp, "raw": {"cpu": 90 + n}}
    for n in range(ALERTS):  # the analysis comes later and merges into the alert
        fp = f"fp-{n}"
        msgs.append(_event(f"aa-{n}", "kairo.alert.analysed", "kairo/alert",
                           {"fingerprint": fp, "analysis": f"cause {n}"}))
        expect["alerts"][fp]["analysis"] = f"cause {n}"
    return msgs, expect


class _Requests:
    """Plain MQTT request/response as a device would do it (MQTT 3.1.1 style ``reply_to``)."""

    def __init__(self, broker: Broker) -> None:
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._inbox = f"kairo-sidecar/response/checklist-{uuid.uuid4().hex[:8]}"
        self._client = paho.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = lambda c, u, m: self._answers.put(json.loads(m.payload))
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(self._inbox, qos=1)
        self._client.loop_start()

    def ask(self, op: str, body: dict[str, Any]) -> Any:
        transaction = uuid.uuid4().hex
        info = self._client.publish(f"kairo-sidecar/request/{op}", json.dumps(
            {**body, "reply_to": self._inbox, "transaction": transaction}), qos=1)
        info.wait_for_publish(10)
        while True:
            answer = self._answers.get(timeout=15)
            if answer.get("transaction") == transaction:
                assert answer["status"] == "ok", answer
                return answer["data"]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _cli(sidecar: SidecarProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**sidecar.env, **{"KAIRO_SIDECAR_" + k: v for k, v in env.items()}}
    done = subprocess.run([sys.executable, "-m", "sidecar", *args], env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def _reload(ask: Callable[[str, dict[str, Any]], Any], expect: dict[str, Any]) -> None:
    """The app's reload, with one request function (raw MQTT or the client's)."""
    for conv, ids in expect["messages"].items():  # the last 10 messages of each conversation
        page = ask("query", {"type": "kairo.chat.message", "where": {"payload.conversation_id": conv},
                             "order": "desc", "limit": 10})
        assert [e["id"] for e in page["events"]] == ids[::-1][:10]
        assert "unindexed_where" not in page or page["unindexed_where"] is None
    listed = ask("kv/list", {"prefix": "plugin/", "limit": 100})  # every plugin's status
    assert {e["key"]: e["value"] for e in listed["entries"]} == {
        f"plugin/{name}": state for name, (state, _) in expect["plugins"].items()}
    assert all(e["version"] == CHANGES for e in listed["entries"])
    for fp, alert in expect["alerts"].items():  # an alert by its fingerprint, merged
        got = ask("kv/get", {"key": f"alert/{fp}"})
        assert got["value"] == alert and got["version"] == 2
    latest = ask("latest", {"key": "payload.name", "type": "kairo.plugin.state"})
    assert latest["indexed"] is False  # payload.name is not in [indexes] paths here
    assert {e["payload"]["name"]: e["id"] for e in latest["events"]} == {
        name: event_id for name, (_, event_id) in expect["plugins"].items()}
    alerts = ask("query", {"type": "kairo.alert.*", "where": {"payload.fingerprint": "fp-1"}})
    assert [e["id"] for e in alerts["events"]] == ["ar-1", "aa-1"]
    assert "unindexed_where" not in alerts or alerts["unindexed_where"] is None


def _client_ask(client: SidecarClient) -> Callable[[str, dict[str, Any]], Any]:
    def ask(op: str, body: dict[str, Any]) -> Any:
        if op == "query":
            page = client.query(**body)
            out: dict[str, Any] = {"events": page.events, "next": page.next}
            if page.unindexed_where is not None:
                out["unindexed_where"] = page.unindexed_where
            return out
        if op == "kv/list":
            return {"entries": list(client.kv_list(body["prefix"], limit=body["limit"]))}
        if op == "kv/get":
            return client.kv_get(body["key"])
        if op == "latest":
            page = client.latest(body.pop("key"), **body)
            return {"events": page.events, "indexed": page.indexed}
        raise AssertionError(op)
    return ask


def test_app_reload_after_sigkill_retention_and_rebuild(
        broker: Broker, sidecar_factory: Callable[..., SidecarProcess]) -> None:
    """After a SIGKILL and restart the app's reload (last N messages of a conversation through
    the path index, every plugin's status from kv list, alerts by fingerprint merged, latest
    per plugin) answers everything over raw MQTT and through sidecar.client; a rebuild after
    deleting the kv rows gives the same rows; a purge with a short max_age and keep_latest
    keeps each plugin's last state event and every kv entry."""
    sidecar = sidecar_factory(broker, **SETTINGS).start()
    msgs, expect = _app_history()
    assert len(publish_all(broker.host, broker.port, msgs)) == len(msgs)
    wait_until(lambda: count_rows(sidecar.db_path) == len(msgs), timeout=30,
               message="every event stored")
    sidecar.kill()
    sidecar.start()

    raw = _Requests(broker)
    client = SidecarClient(broker.host, broker.port).connect()
    try:
        _reload(raw.ask, expect)
        _reload(_client_ask(client), expect)

        kv_rows = "SELECT key, value, version, updated_at, seq FROM kv_store ORDER BY key"
        before = _rows(sidecar.db_path, kv_rows)
        assert len(before) == PLUGINS + ALERTS
        _rows(sidecar.db_path, "DELETE FROM kv_store")  # beside the running daemon
        for name in ("plugins", "alerts"):
            out = _cli(sidecar, "project", "rebuild", name).stdout
            assert f"projection {name}:" in out
        assert _rows(sidecar.db_path, kv_rows) == before
        listed = _cli(sidecar, "project", "list").stdout
        assert "plugins: type=kairo.plugin.state" in listed and "keys=4" in listed

        rule = json.dumps([{"type": "kairo.plugin.*", "max_age": "1ms",
                            "keep_latest": "payload.name"}])
        _cli(sidecar, "purge", RETENTION__RULES=rule)
        kept = _rows(sidecar.db_path, "SELECT id FROM events WHERE type = 'kairo.plugin.state' "
                                      "ORDER BY id")
        assert kept == sorted((event_id,) for _, event_id in expect["plugins"].values())
        assert _rows(sidecar.db_path, kv_rows) == before
        _reload(_client_ask(client), expect)
    finally:
        client.close()
        raw.close()
    assert sidecar.terminate() == 0
