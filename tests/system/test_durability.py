"""No PUBACK before the WAL frames of its events are on stable storage (issue 11).

The real daemon runs under ``strace -f`` against a real Mosquitto; a few thousand QoS 1 events
go through it; the trace is then read in order: every write of a PUBACK to the broker must find
the database and its WAL with no write that a completed fsync/fdatasync of that file has not
covered. ``durability = "none"`` (synchronous NORMAL, no sync of ours) must be caught, which
shows the check can fail; the default (group commit) and ``"full"`` must pass.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SidecarProcess, count_rows, wait_until
from tests.support.broker import Broker
from tests.support.publisher import event_messages, publish_all
from tests.support.syscalls import check_acks, strace_command

EVENTS = 3000


def _daemon_pid(tracer_pid: int) -> int:
    """The sidecar process strace started (its child)."""
    children = Path(f"/proc/{tracer_pid}/task/{tracer_pid}/children")
    pids = wait_until(lambda: children.read_text().split(), timeout=10,
                      message="the traced daemon")
    assert isinstance(pids, list)
    return int(pids[0])


def _traced_run(tmp_path: Path, broker: Broker, make: Callable[..., SidecarProcess],
                **overrides: object) -> tuple[SidecarProcess, Path]:
    trace = tmp_path / "strace.txt"
    wrapper = strace_command(trace)
    if wrapper is None:
        pytest.skip("strace is not installed")
    sidecar = make(broker, **overrides)
    sidecar.wrapper = wrapper
    sidecar.start()
    assert sidecar.proc is not None
    daemon = _daemon_pid(sidecar.proc.pid)
    publish_all(broker.host, broker.port, event_messages(EVENTS), timeout=120)
    wait_until(lambda: count_rows(sidecar.db_path) >= EVENTS, timeout=120,
               message=f"{EVENTS} events stored")
    os.kill(daemon, signal.SIGTERM)
    assert sidecar.proc.wait(60) == 0
    return sidecar, trace


@pytest.mark.parametrize("durability", ["group", "full", "none"])
def test_no_puback_before_the_wal_is_synced(tmp_path: Path, broker: Broker, sidecar_factory:
                                            Callable[..., SidecarProcess], durability: str) -> None:
    """group and full sync the database files before every PUBACK; none is caught doing not."""
    overrides: dict[str, object] = {} if durability == "group" else {"database__durability":
                                                                      durability}
    sidecar, trace = _traced_run(tmp_path, broker, sidecar_factory, **overrides)
    wal = Path(f"{sidecar.db_path}-wal")
    found = check_acks(trace, files=[sidecar.db_path, wal], broker_port=broker.port)
    assert count_rows(sidecar.db_path) == EVENTS
    assert found.pubacks >= 1, "no PUBACK seen in the trace: the check would prove nothing"
    assert found.writes.get(str(wal), 0) >= 1, "no WAL write seen in the trace"
    if durability == "none":
        assert found.violations, "NORMAL without a sync acked only synced events: check blind?"
    else:
        assert not found.violations, "\n".join(found.violations[:10])
