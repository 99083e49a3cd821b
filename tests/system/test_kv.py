"""The key-value store end to end: a real Mosquitto, one in-process sidecar for the module, a
real SQLite file; requests through ``SidecarClient`` (MQTT 5 and 3.1.1, JSON and MessagePack),
the ``kv/set`` topic, watch streams, compare-and-set under concurrent writers. Each test uses
its own key prefix."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from sidecar.client import SidecarClient
from sidecar.errors import RequestError
from tests.conftest import ROOT, wait_until
from tests.support.inprocess import Daemon, daemon
from tests.system.test_subscriber import publish, publisher

Env = Daemon


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("kv")
    with daemon(tmp, KV__MAX_VALUE_BYTES="1024", KV__PUBLISH_RETAINED="true",
                API__MAX_STREAMS="3", PROJECTIONS=json.dumps([
                    {"name": "devices", "type": "kairo.device.*",
                     "key": "pw/dev/{payload.name}", "mode": "merge"}])) as d:
        yield d


def test_put_get_delete_round_trip(client: SidecarClient, env: Env) -> None:
    """A put answers version 1, then 2; get returns the value; delete removes it, and each write
    stored its kairo.kv.* event."""
    value = {"enabled": True, "config": {"city": "Zürich", "n": [1, 2.5, None]}}
    assert client.kv_put("rt/plugin/weather", value) == 1
    assert client.kv_put("rt/plugin/weather", {**value, "enabled": False}) == 2
    got = client.kv_get("rt/plugin/weather")
    assert got["value"] == {**value, "enabled": False} and got["version"] == 2
    assert got["updated_at"] > 0
    assert client.kv_delete("rt/plugin/weather") == 2
    with pytest.raises(RequestError) as err:
        client.kv_get("rt/plugin/weather")
    assert err.value.code == "not_found" and err.value.field == "key"
    events = env.rows("SELECT type, payload FROM events WHERE topic = ? ORDER BY seq",
                      "kairo-sidecar/kv/state/rt/plugin/weather")
    assert [t for t, _ in events] == ["kairo.kv.put", "kairo.kv.put", "kairo.kv.delete"]
    assert msgspec.json.decode(events[0][1]) == {"key": "rt/plugin/weather", "value": value,
                                                 "version": 1}
    assert msgspec.json.decode(events[2][1]) == {"key": "rt/plugin/weather", "version": 2}


@pytest.mark.parametrize(("protocol", "encoding"), [("3.1.1", "json"), ("5", "msgpack")])
def test_other_protocols_and_encodings(env: Env, protocol: str, encoding: str) -> None:
    """The kv ops answer over MQTT 3.1.1 (reply_to + transaction) and in MessagePack."""
    with env.client(protocol=protocol, encoding=encoding) as c:
        key = f"enc/{protocol}/{encoding}"
        assert c.kv_put(key, [1, "two", None]) == 1
        assert c.kv_get(key)["value"] == [1, "two", None]
        assert c.kv_put(key, None, if_version=1) == 2
        assert c.kv_get(key)["value"] is None


def test_compare_and_set(client: SidecarClient, env: Env) -> None:
    """if_version: 0 puts only if absent, a stale version is a conflict naming if_version, and
    nothing is written by a refused put or delete."""
    assert client.kv_put("cas/a", 1, if_version=0) == 1
    with pytest.raises(RequestError) as err:
        client.kv_put("cas/a", 2, if_version=0)
    assert err.value.code == "conflict" and err.value.field == "if_version"
    with pytest.raises(RequestError) as err:
        client.kv_delete("cas/a", if_version=7)
    assert err.value.code == "conflict"
    assert client.kv_put("cas/a", 2, if_version=1) == 2
    assert client.kv_get("cas/a")["value"] == 2
    assert len(env.rows("SELECT 1 FROM events WHERE topic = 'kairo-sidecar/kv/state/cas/a'")) == 2


def test_concurrent_read_modify_write_loses_no_update(env: Env) -> None:
    """Eight threads on two connections increment one counter with read-modify-write and
    if_version: the final value equals the number of puts that succeeded."""
    clients = [env.client(), env.client()]
    clients[0].kv_put("cas/counter", 0)
    successes = [0] * 8
    conflicts = [0] * 8

    def work(i: int) -> None:
        c = clients[i % 2]
        for _ in range(15):
            got = c.kv_get("cas/counter")
            try:
                c.kv_put("cas/counter", got["value"] + 1, if_version=got["version"])
                successes[i] += 1
            except RequestError as exc:
                assert exc.code == "conflict"
                conflicts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    final = clients[0].kv_get("cas/counter")
    for c in clients:
        c.close()
    assert sum(successes) + sum(conflicts) == 8 * 15
    assert final["value"] == sum(successes)
    assert final["version"] == sum(successes) + 1
    assert sum(conflicts) > 0  # the writers did collide


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"key": "", "value": 1}, "bad_request", "key"),
    ({"key": "a/+/b", "value": 1}, "bad_request", "key"),
    ({"key": "a/#", "value": 1}, "bad_request", "key"),
    ({"key": "a\u0000b", "value": 1}, "bad_request", "key"),
    ({"key": "k" * 257, "value": 1}, "bad_request", "key"),
    ({"key": "\u00e9" * 200, "value": 1}, "bad_request", "key"),  # 400 bytes
    ({"key": "bad/big", "value": "x" * 2000}, "too_large", "value"),
    ({"key": "bad/unknown", "value": 1, "colour": "red"}, "bad_request", "colour"),
    ({"key": "bad/missing"}, "bad_request", "value"),
    ({"key": "bad/v", "value": 1, "if_version": -1}, "bad_request", "if_version"),
])
def test_bad_put_is_refused_and_stores_nothing(client: SidecarClient, env: Env,
                                               body: dict[str, Any], code: str,
                                               field: str) -> None:
    """A bad key, a value over [kv] max_value_bytes or an unknown field is answered with the
    code and the field, and no kv row or event is stored."""
    before = env.rows("SELECT count(*) FROM kv_store")[0][0], env.rows(
        "SELECT count(*) FROM events WHERE type LIKE 'kairo.kv.%'")[0][0]
    with pytest.raises(RequestError) as err:
        client.request("kv/put", body)
    assert (err.value.code, err.value.field) == (code, field)
    assert "msgspec" not in err.value.message and "Expected" not in err.value.message
    after = env.rows("SELECT count(*) FROM kv_store")[0][0], env.rows(
        "SELECT count(*) FROM events WHERE type LIKE 'kairo.kv.%'")[0][0]
    assert after == before


def test_list_pages_by_key_under_a_prefix(client: SidecarClient) -> None:
    """kv/list returns the keys under the prefix only, in key order, across pages with next."""
    keys = [f"ls/app/{i:02d}" for i in range(25)]
    for k in reversed(keys):
        client.kv_put(k, {"k": k})
    client.kv_put("ls/apple", 1)  # shares the text prefix "ls/app" but not "ls/app/"
    client.kv_put("ls/aoo", 1)
    page = client.request("kv/list", {"prefix": "ls/app/", "limit": 10})
    assert [e["key"] for e in page["entries"]] == keys[:10] and page["next"] == keys[9]
    assert [e["key"] for e in client.kv_list("ls/app/", limit=7)] == keys
    assert [e["key"] for e in client.kv_list("ls/app")] == [*keys, "ls/apple"]


def test_watch_sends_values_caught_up_then_changes(env: Env, client: SidecarClient) -> None:
    """kv/watch sends the current values under its prefix, caught_up, then each later put and
    delete under the prefix (not others), and ends when cancelled."""
    client.kv_put("w/one", 1)
    client.kv_put("w/two", 2)
    client.kv_put("wx/other", 0)
    with env.client() as watcher:
        stream = watcher.kv_watch("w/")
        messages = stream.messages()
        entries: list[dict[str, Any]] = []
        for message in messages:
            entries.extend(message.get("entries", ()))
            if message.get("caught_up"):
                break
        assert [(e["key"], e["value"], e["version"]) for e in entries] == [
            ("w/one", 1, 1), ("w/two", 2, 1)]
        client.kv_put("wx/other", 1)
        client.kv_put("w/two", 22)
        client.kv_delete("w/one")
        changes: list[dict[str, Any]] = []
        for message in messages:
            changes.extend(message.get("changes", ()))
            if len(changes) >= 2:
                break
        assert [(c["op"], c["key"], c["value"], c["version"]) for c in changes] == [
            ("put", "w/two", 22, 2), ("delete", "w/one", None, 1)]
        stream.cancel()
        rest = list(messages)
        assert rest[-1]["done"] and rest[-1]["reason"] == "cancelled"


def test_watch_sees_projected_changes_between_kv_writes(env: Env, client: SidecarClient) -> None:
    """kv/watch sends the changes a projection folds (which store no kv event) in seq order
    with the puts around them; a redelivered event neither changes nor shows up again."""
    pub = publisher(env.broker)

    def device(event_id: str, **payload: Any) -> None:
        body = {"id": event_id, "type": "kairo.device.state", "payload": payload}
        publish(pub, "kairo/dev/state", json.dumps(body).encode())

    device("pw-1", name="lamp", on=True)
    wait_until(lambda: env.rows("SELECT count(*) FROM kv_store WHERE key = 'pw/dev/lamp'") == [(1,)])
    try:
        with env.client() as watcher:
            stream = watcher.kv_watch("pw/")
            messages = stream.messages()
            entries: list[dict[str, Any]] = []
            for message in messages:
                entries.extend(message.get("entries", ()))
                if message.get("caught_up"):
                    break
            assert [(e["key"], e["value"], e["version"]) for e in entries] == [
                ("pw/dev/lamp", {"name": "lamp", "on": True}, 1)]
            device("pw-2", name="lamp", level=3)
            wait_until(lambda: env.rows("SELECT version FROM kv_store WHERE key = 'pw/dev/lamp'")
                       == [(2,)])
            client.kv_put("pw/manual", "m")
            device("pw-1", name="lamp", on=True)  # a redelivery: not folded again
            device("pw-3", name="fan", on=False)
            changes: list[dict[str, Any]] = []
            for message in messages:
                changes.extend(message.get("changes", ()))
                if len(changes) >= 3:
                    break
            assert [(c["op"], c["key"], c["value"], c["version"]) for c in changes] == [
                ("put", "pw/dev/lamp", {"name": "lamp", "on": True, "level": 3}, 2),
                ("put", "pw/manual", "m", 1),
                ("put", "pw/dev/fan", {"name": "fan", "on": False}, 1)]
            stream.cancel()
            list(messages)
        assert env.rows("SELECT count(*) FROM events WHERE type = 'kairo.kv.put' AND "
                        "topic LIKE '%/kv/state/pw/dev/lamp'") == [(0,)]
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_mqtt_set_form_and_retained_mirror(env: Env, client: SidecarClient) -> None:
    """A QoS 1 message on kv/set/<key> puts its JSON value (an empty one deletes), a redelivered
    same value makes no new version, an invalid one becomes a dead letter, and the retained
    mirror on kv/state/<key> follows."""
    device = publisher(env.broker)
    try:
        publish(device, "kairo-sidecar/kv/set/dev/lamp", b'{"on": true}')
        assert wait_until(lambda: _value(client, "dev/lamp") == {"on": True})
        publish(device, "kairo-sidecar/kv/set/dev/lamp", b'{"on":true}')  # same value again
        publish(device, "kairo-sidecar/kv/set/dev/lamp", b'{"on": false}')
        assert wait_until(lambda: _value(client, "dev/lamp") == {"on": False})
        assert client.kv_get("dev/lamp")["version"] == 2
        publish(device, "kairo-sidecar/kv/set/dev/bad", b'{"on": tru')
        assert wait_until(lambda: env.rows(
            "SELECT reason FROM dead_letters WHERE topic = 'kairo-sidecar/kv/set/dev/bad'"))
        reason = env.rows("SELECT reason FROM dead_letters "
                          "WHERE topic = 'kairo-sidecar/kv/set/dev/bad'")[0][0]
        assert reason.startswith("kv set refused: value: not JSON")
        with pytest.raises(RequestError):
            client.kv_get("dev/bad")
        mirrored: list[bytes] = []
        got = threading.Event()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            if msg.retain:
                mirrored.append(msg.payload)
                got.set()

        device.on_message = on_message
        device.subscribe("kairo-sidecar/kv/state/dev/lamp", qos=1)
        assert got.wait(10)
        assert msgspec.json.decode(mirrored[0]) == {"on": False}
        publish(device, "kairo-sidecar/kv/set/dev/lamp", b"")
        assert wait_until(lambda: _value(client, "dev/lamp") == "absent")
    finally:
        device.loop_stop()
        device.disconnect()


def test_writes_under_a_projection_prefix_are_refused(env: Env, client: SidecarClient) -> None:
    """kv/put, kv/delete, kv/set and ``kv put --db`` under a projection's prefix (pw/dev/) are
    refused naming the projection, and store nothing: the next event or a rebuild would undo
    them. A key beside the prefix (pw/other) is written."""
    for call in (lambda: client.kv_put("pw/dev/x", 1), lambda: client.kv_delete("pw/dev/x"),
                 lambda: client.kv_put("pw/dev/x", 1, if_version=0)):
        with pytest.raises(RequestError) as refused:
            call()
        assert (refused.value.code, refused.value.field) == ("bad_request", "key")
        assert "projection 'devices'" in refused.value.message
    assert client.kv_put("pw/other", 1) == 1
    device = publisher(env.broker)
    try:
        publish(device, "kairo-sidecar/kv/set/pw/dev/y", b"2")
        assert wait_until(lambda: env.rows(
            "SELECT reason FROM dead_letters WHERE topic = 'kairo-sidecar/kv/set/pw/dev/y'"))
    finally:
        device.loop_stop()
        device.disconnect()
    reason = env.rows("SELECT reason FROM dead_letters "
                      "WHERE topic = 'kairo-sidecar/kv/set/pw/dev/y'")[0][0]
    assert reason.startswith("kv set refused: topic: 'pw/dev/y' is under projection 'devices'")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "kv", "put", "pw/dev/z", "3", "--db",
         str(env.run.db_path)], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "KAIRO_SIDECAR_PROJECTIONS": json.dumps(
            [{"name": "devices", "type": "kairo.device.*", "key": "pw/dev/{payload.name}"}])})
    assert done.returncode == 2 and "projection 'devices'" in done.stderr, done.stderr
    assert env.rows("SELECT key FROM kv_store WHERE key IN ('pw/dev/x', 'pw/dev/y', "
                    "'pw/dev/z')") == []


def _value(client: SidecarClient, key: str) -> Any:
    try:
        return client.kv_get(key)["value"]
    except RequestError as exc:
        assert exc.code == "not_found"
        return "absent"


def test_retention_never_deletes_kv(env: Env, client: SidecarClient) -> None:
    """kairo-sidecar purge (max_events = 1) beside the daemon deletes the kv events, never the
    kv_store rows."""
    client.kv_put("keep/me", {"state": 1})
    client.kv_put("keep/newest", 0)  # the one event max_events = 1 keeps
    entries = env.rows("SELECT key, value, version FROM kv_store ORDER BY key")
    purge = subprocess.run([sys.executable, "-m", "sidecar", "purge"], capture_output=True,
                           timeout=120, cwd=ROOT, env={
                               **os.environ, "KAIRO_SIDECAR_RETENTION__MAX_EVENTS": "1",
                               "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{env.run.db_path}"})
    assert purge.returncode == 0, purge.stderr
    assert env.rows("SELECT count(*) FROM events") == [(1,)]
    assert env.rows("SELECT count(*) FROM events WHERE type = 'kairo.kv.put' "
                    "AND topic = 'kairo-sidecar/kv/state/keep/me'") == [(0,)]
    assert env.rows("SELECT value FROM kv_store WHERE key = 'keep/me'") == [('{"state":1}',)]
    assert env.rows("SELECT key, value, version FROM kv_store ORDER BY key") == entries
    assert client.kv_get("keep/me")["value"] == {"state": 1}


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args, "--host", env.broker.host,
                           "--port", str(env.broker.port)], capture_output=True, timeout=60,
                          cwd=ROOT)


def test_cli_through_the_broker(env: Env) -> None:
    """kairo-sidecar kv put/get/list/delete talk to the running sidecar; a conflict exits 1
    with the code in our words."""
    put = _cli(env, "kv", "put", "cli/a", '{"n": 1}')
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {"key": "cli/a", "version": 1}
    got = json.loads(_cli(env, "kv", "get", "cli/a").stdout)
    assert (got["value"], got["version"]) == ({"n": 1}, 1)
    stale = _cli(env, "kv", "put", "cli/a", "2", "--if-version", "5")
    assert stale.returncode == 1 and b"conflict" in stale.stderr
    _cli(env, "kv", "put", "cli/b", "text")
    listed = _cli(env, "kv", "list", "cli/")
    assert [json.loads(line)["value"] for line in listed.stdout.splitlines()] == [{"n": 1}, "text"]
    assert _cli(env, "kv", "delete", "cli/b").returncode == 0
    assert _cli(env, "kv", "get", "cli/b").returncode == 1


def test_cli_tables_through_the_broker(env: Env, client: SidecarClient,
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """kv list/get/watch --format table through the running sidecar (in-process CLI): one line
    per entry, the value as compact JSON; watch shows the current values (op -), its caught-up
    notice on stderr, then each put and delete with its op."""
    from sidecar.cli import commands

    monkeypatch.setattr(commands, "configure_logging", lambda config: None)
    monkeypatch.setenv("COLUMNS", "100")
    address = ("--host", env.broker.host, "--port", str(env.broker.port))
    client.kv_put("tab/a", {"n": 1, "s": "x\ny"})
    client.kv_put("tab/b", "z" * 200)
    assert commands.main(["kv", "list", "tab/", *address, "--format", "table"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["key", "version", "updated", "value"]
    assert [r.split()[0] for r in rows] == ["tab/a", "tab/b"]
    assert rows[0].endswith('{"n":1,"s":"x\\ny"}') and rows[1].endswith("…")
    assert all(len(r) <= 100 for r in rows)
    assert commands.main(["kv", "get", "tab/a", *address, "--format", "table"]) == 0
    fields = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert fields["value"] == '{"n":1,"s":"x\\ny"}' and fields["version"] == "1"

    out, err = io.StringIO(), io.StringIO()  # read while the watch writes: no capsys snaps
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    done: list[int] = []
    watch = threading.Thread(target=lambda: done.append(commands.main(
        ["kv", "watch", "tab/", *address, "--max-duration", "2", "--format", "table"])))
    watch.start()
    wait_until(lambda: "caught up" in err.getvalue())
    client.kv_put("tab/a", 2)
    client.kv_delete("tab/b")
    watch.join(30)
    header, *rows = out.getvalue().splitlines()
    assert done == [0] and header.split() == ["op", "key", "version", "updated", "value"]
    assert [r.split()[:3] for r in rows] == [["-", "tab/a", "1"], ["-", "tab/b", "1"],
                                             ["put", "tab/a", "2"], ["delete", "tab/b", "1"]]
    assert rows[2].endswith(" 2") and rows[3].endswith(" -")
