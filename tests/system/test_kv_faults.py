"""The key-value store across a SIGKILL of the daemon: what was answered (kv/put) or acked
(a kv/set PUBACK) is there after the restart, once, with its event."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.client import SidecarClient
from tests.conftest import SidecarProcess, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Message, publish_all
from tests.support.seed import query
from tests.support.syscalls import check_acks, strace_command
from tests.system.test_durability import _daemon_pid
from tests.system.test_subscriber import publish, publisher

pytestmark = pytest.mark.slow


def test_answered_put_and_acked_set_survive_sigkill(
        persistent_broker: Broker, sidecar_factory: Callable[..., SidecarProcess]) -> None:
    """SIGKILL right after a kv/put answer and a kv/set PUBACK: after the restart both values
    are there at the versions answered, and each write left exactly one event."""
    sidecar = sidecar_factory(persistent_broker).start()
    with SidecarClient(persistent_broker.host, persistent_broker.port).connect() as client:
        assert client.kv_put("crash/answered", {"n": 1}) == 1
        assert client.kv_put("crash/answered", {"n": 2}) == 2
        device = publisher(persistent_broker)
        publish(device, "kairo-sidecar/kv/set/crash/acked", b'{"on": true}')  # waits for PUBACK
        device.loop_stop()
        device.disconnect()
        sidecar.kill()
    sidecar.start()
    with SidecarClient(persistent_broker.host, persistent_broker.port).connect() as client:
        answered = client.kv_get("crash/answered")
        assert (answered["value"], answered["version"]) == ({"n": 2}, 2)
        acked = client.kv_get("crash/acked")
        assert (acked["value"], acked["version"]) == ({"on": True}, 1)
        history = list(client.query_all(type="kairo.kv.*"))
    assert [(e["type"], e["payload"]["key"]) for e in history] == [
        ("kairo.kv.put", "crash/answered"), ("kairo.kv.put", "crash/answered"),
        ("kairo.kv.put", "crash/acked")]
    sidecar.terminate()


def test_no_kv_set_puback_before_the_wal_is_synced(
        tmp_path: Path, broker: Broker, sidecar_factory: Callable[..., SidecarProcess]) -> None:
    """Under strace, with the default group commit: every PUBACK of a kv/set message finds the
    database and its WAL synced (the same check as the events' PUBACKs)."""
    trace = tmp_path / "strace.txt"
    wrapper = strace_command(trace)
    if wrapper is None:
        pytest.skip("strace is not installed")
    sidecar = sidecar_factory(broker)
    sidecar.wrapper = wrapper
    sidecar.start()
    assert sidecar.proc is not None
    daemon = _daemon_pid(sidecar.proc.pid)
    messages = [Message(f"k{i}", f"kairo-sidecar/kv/set/traced/{i % 50}", b'{"i": %d}' % i)
                for i in range(300)]
    assert len(publish_all(broker.host, broker.port, messages, timeout=120)) == 300
    wait_until(lambda: query(sidecar.db_path, "SELECT count(*) FROM events")[0][0] >= 300,
               timeout=60, message="300 kv events")
    os.kill(daemon, signal.SIGTERM)
    assert sidecar.proc.wait(60) == 0
    wal = Path(f"{sidecar.db_path}-wal")
    found = check_acks(trace, files=[sidecar.db_path, wal], broker_port=broker.port)
    assert found.pubacks >= 1, "no PUBACK seen in the trace: the check would prove nothing"
    assert not found.violations, "\n".join(found.violations[:10])
    assert query(sidecar.db_path, "SELECT count(*), sum(version) FROM kv_store") == [(50, 300)]
