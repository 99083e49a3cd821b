"""The daemon and the commands on PostgreSQL: a real server (tests/support/postgres.py), a real
Mosquitto, the daemon as a child process with ``[database] url = "postgresql://..."``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sidecar.client import SidecarClient
from sidecar.config import DatabaseConfig
from tests.conftest import ROOT, SidecarProcess, wait_until
from tests.support.broker import Broker
from tests.support.faultkit import sidecar_env
from tests.support.postgres import Postgres
from tests.support.publisher import Publisher, event_id, event_messages
from tests.support.stores import Store

SidecarFactory = Callable[..., SidecarProcess]


def _store(url: str) -> Store:
    return Store("postgres", DatabaseConfig(url=url))


def _ids(url: str) -> list[str]:
    return [row[0] for row in _store(url).execute("SELECT id FROM events ORDER BY seq")]


def _count(url: str) -> int:
    try:
        return _store(url).count()
    except Exception:  # not migrated yet
        return 0


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_sigkill_mid_stream_on_postgres_stores_every_acked_event_once(
        pg_server: Postgres, persistent_broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """3,000 QoS 1 events into PostgreSQL, the daemon SIGKILLed twice mid-stream and restarted:
    every acked event exactly once; then query, get and replay are answered over MQTT."""
    url = pg_server.fresh_database()
    n = 3000
    sidecar = sidecar_factory(persistent_broker, **sidecar_env(database__url=url)).start()
    messages = event_messages(n)
    first, rest = messages[:2000], messages[2000:]
    with Publisher(persistent_broker.host, persistent_broker.port) as pub:
        pub.publish_in_background(first, rate=800)
        wait_until(lambda: pub.accepted_count >= 500, timeout=30, message="500 PUBACKs")
        sidecar.kill()
        sidecar.start()
        rows = _count(url)
        wait_until(lambda: _count(url) > rows, timeout=30, interval=0.01,
                   message="the restarted sidecar committing a batch")
        sidecar.kill()
        sidecar.start()
        pub.join()
        pub.publish(rest, rate=800)
        accepted = pub.wait_all(timeout=60)
    assert accepted == {m.key for m in messages}
    wait_until(lambda: _count(url) >= n, timeout=60, message=f"{n} rows in PostgreSQL")
    ids = _ids(url)
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {event_id(i) for i in range(n)}

    client = SidecarClient(persistent_broker.host, persistent_broker.port).connect()
    try:
        page = client.query(limit=10)
        assert [e["id"] for e in page.events] == ids[:10]
        got = client.get(event_id(42))
        assert got is not None and got["id"] == event_id(42)
        replayed = [e["id"] for e in client.replay(batch=500)]
        assert replayed == ids
        stats = client.stats()
        assert stats["events_total"] == n
    finally:
        client.close()
    assert sidecar.terminate() == 0


def test_live_replay_on_postgres_forwards_events_committed_after_it_caught_up(
        pg_server: Postgres, broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """A live replay on PostgreSQL sends the stored events, then each event committed later."""
    url = pg_server.fresh_database()
    sidecar = sidecar_factory(broker, **sidecar_env(database__url=url,
                                                    writer__flush_interval="0.05")).start()
    with Publisher(broker.host, broker.port) as pub:
        pub.publish(event_messages(5))
        pub.wait_all(30)
    wait_until(lambda: _count(url) == 5, message="5 rows")
    client = SidecarClient(broker.host, broker.port).connect()
    try:
        replay = client.replay(live=True, batch=10)
        seen: list[str] = []
        stream = iter(replay)
        for _ in range(5):
            seen.append(next(stream)["id"])
        with Publisher(broker.host, broker.port) as pub:
            pub.publish(event_messages(3, start=5))
            pub.wait_all(30)
        for _ in range(3):
            seen.append(next(stream)["id"])
        replay.cancel()
    finally:
        client.close()
    assert seen == [event_id(i) for i in range(8)]
    assert sidecar.terminate() == 0


def test_db_option_takes_a_postgres_url(pg_server: Postgres) -> None:
    """``--db postgresql://...`` names the database on every command, writers included (it was
    once taken for a file name): migrate, kv put/get/list/delete, search-index status, check."""
    url = pg_server.fresh_database()
    done = cli("migrate", "--db", url)
    assert done.returncode == 0, done.stderr
    done = cli("kv", "put", "plugin/weather", '{"enabled": true}', "--db", url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1
    done = cli("kv", "put", "plugin/weather", '{"enabled": false}', "--if-version", "1",
               "--db", url)
    assert done.returncode == 0, done.stderr
    done = cli("kv", "get", "plugin/weather", "--db", url)
    got = json.loads(done.stdout)
    assert (got["value"], got["version"]) == ({"enabled": False}, 2)
    done = cli("kv", "list", "plugin/", "--db", url)
    assert [json.loads(line)["key"] for line in done.stdout.splitlines()] == ["plugin/weather"]
    assert cli("kv", "delete", "plugin/weather", "--db", url).returncode == 0
    assert _store(url).execute("SELECT count(*) FROM kv_store") == [(0,)]
    assert _store(url).execute(
        "SELECT count(*) FROM events WHERE type LIKE 'kairo.kv.%'") == [(3,)]
    done = cli("search-index", "status", "--db", url)
    assert done.returncode == 0 and "search: off" in done.stdout, done.stderr
    done = cli("check", "--db", url)
    assert done.returncode == 0 and "integrity     not applicable" in done.stdout, done.stderr


def test_commands_on_postgres(pg_server: Postgres, tmp_path: Path) -> None:
    """migrate, import, export, query/get/replay --db, stats --db, dead-letters list, purge and
    check work on a postgresql:// URL; backup says to use pg_dump (exit 2)."""
    url = pg_server.fresh_database()
    env = {"KAIRO_SIDECAR_DATABASE__URL": url}
    assert cli("migrate", env=env).returncode == 0
    lines = [json.dumps({"id": f"x-{i}", "topic": "kairo/x", "type": "kairo.x", "source": "s",
                         "payload": {"i": i}, "metadata": {}, "created_at": 1_000 + i,
                         "received_at": 1_000 + i}) for i in range(20)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    done = cli("import", str(tmp_path / "in.jsonl"), env=env)
    assert done.returncode == 0, done.stderr
    again = cli("import", str(tmp_path / "in.jsonl"), env=env)
    assert "imported 0 new events; 20 were already stored" in again.stdout
    done = cli("export", "--type", "kairo.*", "-o", str(tmp_path / "out.jsonl"), env=env)
    assert done.returncode == 0, done.stderr
    exported = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [e["id"] for e in exported] == [f"x-{i}" for i in range(20)]
    assert exported[3]["payload"] == {"i": 3}

    done = cli("query", "--where", "payload.i=3", "--db", url)
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == ["x-3"]
    done = cli("get", "x-7", "--db", url)
    assert done.returncode == 0 and json.loads(done.stdout)["payload"] == {"i": 7}
    done = cli("replay", "--type", "kairo.?", "--db", url)
    assert len(done.stdout.splitlines()) == 20
    done = cli("stats", "--db", url)
    assert json.loads(done.stdout)["events_total"] == 20

    _store(url).execute(
        "INSERT INTO dead_letters (topic, payload, payload_size, reason, received_at) "
        "VALUES ('kairo/bad/1', ?, 3, 'not JSON: Unexpected', 5)", [b"n/a"])
    done = cli("dead-letters", "list", "--reason", "not json", "--topic", "kairo/+/1", "--db", url)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["topic"] for line in done.stdout.splitlines()] == ["kairo/bad/1"]

    done = cli("check", env=env)
    assert done.returncode == 0, done.stderr
    assert "integrity     not applicable" in done.stdout and "events        20" in done.stdout

    done = cli("backup", str(tmp_path / "b.db"), env=env)
    assert done.returncode == 2 and "pg_dump" in done.stderr

    done = cli("purge", env={**env, "KAIRO_SIDECAR_RETENTION__MAX_EVENTS": "5"})
    assert done.returncode == 0, done.stderr
    assert _ids(url) == [f"x-{i}" for i in range(15, 20)]


def test_password_is_masked_and_a_refused_connection_exits_3(pg_server: Postgres) -> None:
    """A connection refused names the URL with its password masked and exits 3."""
    url = f"postgresql://kairo:hunter2secret@127.0.0.1:{_closed_port()}/kairo"
    done = cli("check", env={"KAIRO_SIDECAR_DATABASE__URL": url})
    assert done.returncode == 3
    assert "connection refused" in done.stderr
    assert "hunter2secret" not in done.stderr + done.stdout
    assert "kairo:***@127.0.0.1" in done.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
