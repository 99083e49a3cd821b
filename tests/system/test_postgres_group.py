"""Several sidecars on one PostgreSQL: a shared group under SIGKILLs, and a server restart
mid-stream. A real Mosquitto, a real server, the daemons as child processes."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.client import SidecarClient
from sidecar.config import DatabaseConfig
from sidecar.errors import RequestError
from tests.conftest import SidecarProcess, wait_until
from tests.support.broker import Broker
from tests.support.faultkit import sidecar_env
from tests.support.postgres import Postgres, PostgresUnavailable, start_local
from tests.support.publisher import Publisher, event_id, event_messages
from tests.support.stores import Store


def _store(url: str) -> Store:
    return Store("postgres", DatabaseConfig(url=url))


def _count(url: str) -> int:
    try:
        return _store(url).count()
    except Exception:  # not migrated yet, or the server restarting
        return 0


def _ids(url: str) -> list[str]:
    return [row[0] for row in _store(url).execute("SELECT id FROM events ORDER BY seq")]


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[Postgres]:
    """A server of the test's own (it is restarted): Debian's binaries only."""
    try:
        server = start_local()
    except PostgresUnavailable as exc:
        pytest.skip(f"no local PostgreSQL server binaries: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _member(tmp_path: Path, broker: Broker, url: str, name: str, protocol: str = "5",
            **overrides: object) -> SidecarProcess:
    home = tmp_path / name
    home.mkdir()
    return SidecarProcess(home, broker, **sidecar_env(
        database__url=url, mqtt__shared_group="kairo", mqtt__client_id=f"kairo-{name}-{os.getpid()}",
        mqtt__protocol=protocol, writer__flush_interval="0.05", **overrides))


def _cancelled(client: SidecarClient, stream: str) -> bool:
    """Cancel ``stream`` again: True once the member that ran it answers not_found."""
    try:
        client.cancel(stream)
    except RequestError as exc:
        assert exc.code == "not_found"
        return True
    return False


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_shared_group_splits_the_stream_and_answers_each_request_once(
        pg_server: Postgres, persistent_broker: Broker, tmp_path: Path, protocol: str) -> None:
    """Two members (MQTT 5, and 3.1.1: Mosquitto shares for both) store 1,000 events once
    between them, and (MQTT 5) a request is answered by exactly one of them; a live replay is
    cancelled by whichever member runs it (which also answers not_found once it ended), and
    follows the events both members store."""
    url = pg_server.fresh_database()
    members = [_member(tmp_path, persistent_broker, url, f"p{i}", protocol, log__level="debug")
               for i in range(2)]
    try:
        for member in members:
            member.start()
        n = 1000
        with Publisher(persistent_broker.host, persistent_broker.port) as pub:
            pub.publish(event_messages(n), rate=2000)
            pub.wait_all(timeout=60)
        wait_until(lambda: _count(url) >= n, timeout=60, message=f"{n} rows in PostgreSQL")
        assert sorted(_ids(url)) == sorted(event_id(i) for i in range(n))
        assert all("$share/kairo/kairo-sidecar/request/#" in m.log_text() for m in members)
        if protocol == "5":  # the client's requests carry MQTT 5 response topics
            client = SidecarClient(persistent_broker.host, persistent_broker.port).connect()
            try:
                assert client.stats()["events_total"] == n
                # cancel reaches both members: the one running the stream answers, the
                # other stays silent (no not_found answer to confuse the client)
                # two writers: the lowest seq is whichever member committed first, not
                # necessarily the first event published
                first = _ids(url)[0]
                for _ in range(3):
                    replay = client.replay(live=True, batch=10)
                    stream = iter(replay)
                    assert next(stream)["id"] == first
                    assert client.cancel(replay.stream or "")["stream"] == replay.stream
                    # once ended (the stream stops asynchronously: a cancel racing its end is
                    # answered again), the member that ran it says not_found; the other stays
                    # silent
                    sid = replay.stream or ""
                    wait_until(lambda sid=sid: _cancelled(client, sid), timeout=15,
                               message="not_found for a cancelled stream")
                # a live replay runs on one member and follows what both members store
                replay = client.replay(live=True, batch=500)
                stream = iter(replay)
                seen = [next(stream)["id"] for _ in range(n)]
                with Publisher(persistent_broker.host, persistent_broker.port) as pub:
                    pub.publish(event_messages(40, start=n))
                    pub.wait_all(timeout=30)
                seen += [next(stream)["id"] for _ in range(40)]
                replay.cancel()
                assert sorted(seen) == sorted(event_id(i) for i in range(n + 40))
            finally:
                client.close()
        for member in members:
            assert member.terminate() == 0
        answers = [line for m in members for line in m.log_text().splitlines()
                   if '"request_answered"' in line and '"op": "stats"' in line]
        assert len(answers) == (1 if protocol == "5" else 0), answers
    finally:
        for member in members:
            member.close()


def test_three_sidecars_in_a_shared_group_under_sigkills_store_every_event_once(
        pg_server: Postgres, persistent_broker: Broker, tmp_path: Path) -> None:
    """6,000 QoS 1 events through a shared group of three sidecars writing one PostgreSQL,
    members SIGKILLed and restarted while it runs: every event exactly once."""
    url = pg_server.fresh_database()
    members = [_member(tmp_path, persistent_broker, url, f"m{i}") for i in range(3)]
    try:
        for member in members:
            member.start()
        n = 6000
        messages = event_messages(n)
        rng = random.Random(13)
        with Publisher(persistent_broker.host, persistent_broker.port) as pub:
            pub.publish_in_background(messages, rate=500)
            for round_, mark in enumerate((1000, 2500, 4000)):
                wait_until(lambda m=mark: pub.accepted_count >= m, timeout=30,
                           message=f"{mark} PUBACKs")
                victim = members[rng.randrange(3) if round_ else 0]
                victim.kill()
                victim.start()
            pub.join()
            accepted = pub.wait_all(timeout=60)
        assert accepted == {m.key for m in messages}
        wait_until(lambda: _count(url) >= n, timeout=60, message=f"{n} rows in PostgreSQL")
        ids = _ids(url)
        assert len(ids) == len(set(ids)) == n
        assert set(ids) == {event_id(i) for i in range(n)}
        for member in members:
            assert member.terminate() == 0
        assert all("$share/kairo/kairo/#" in m.log_text() for m in members)
    finally:
        for member in members:
            member.close()


def test_the_writer_survives_a_postgres_restart_mid_stream(
        own_pg: Postgres, persistent_broker: Broker, tmp_path: Path) -> None:
    """The server is restarted (pg_ctl restart) twice while 3,000 QoS 1 events stream in: the
    writer reconnects with back-off, acks nothing it has not committed, every acked event is
    stored exactly once, and the request API reads again."""
    url = own_pg.fresh_database()
    home = tmp_path / "one"
    home.mkdir()
    sidecar = SidecarProcess(home, persistent_broker, **sidecar_env(
        database__url=url, writer__flush_interval="0.05")).start()
    client = SidecarClient(persistent_broker.host, persistent_broker.port).connect()
    try:
        assert client.query(limit=1).events == []  # the workers' read connections are open
        n = 3000
        messages = event_messages(n)
        with Publisher(persistent_broker.host, persistent_broker.port) as pub:
            pub.publish_in_background(messages, rate=600)
            for _ in range(2):
                done = pub.accepted_count
                wait_until(lambda d=done: pub.accepted_count >= d + 500, timeout=60,
                           message="500 more PUBACKs")
                offset = len(sidecar.log_text())
                own_pg.restart()
                sidecar.wait_log("batch_write_recovered", after=offset, timeout=60)
            pub.join()
            accepted = pub.wait_all(timeout=90)
        assert accepted == {m.key for m in messages}
        wait_until(lambda: _count(url) >= n, timeout=60, message=f"{n} rows in PostgreSQL")
        ids = _ids(url)
        assert len(ids) == len(set(ids)) == n
        assert "batch_write_failed" in sidecar.log_text()
        # the request API's read connections were cut too: a read fails at most once, then
        # the reader has reconnected and answers
        def answered() -> bool:
            try:
                return [e["id"] for e in client.query(limit=5).events] == ids[:5]
            except RequestError:
                return False

        wait_until(answered, timeout=30, message="a query answered after the restarts")
        assert sidecar.terminate() == 0
    finally:
        client.close()
        sidecar.close()
