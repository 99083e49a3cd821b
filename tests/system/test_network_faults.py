"""The network to the broker goes away and comes back: the broker stopped for 30 s (connection
refused all along), and the link cut silently (no FIN, no RST: only the keep-alive can tell).
The sidecar stays up, reconnects by itself, resumes its session, and loses nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import SidecarProcess
from tests.support import scenarios
from tests.support.broker import Broker
from tests.support.faultkit import events_named, sidecar_env, skip_reason_external
from tests.support.netproxy import NetworkProxy

pytestmark = pytest.mark.slow

SidecarFactory = Callable[..., SidecarProcess]


def test_broker_down_for_30s_sidecar_reconnects_and_resumes(
        persistent_broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """Broker stopped for 30 s mid-stream: the same process reconnects, resumes, stores all once.

    The broker stopped for 30 s in the middle of 3,000 events: the same sidecar process keeps
    trying, reconnects once it is back (session present), and stores all 3,000 once."""
    reason = skip_reason_external()
    if reason:
        pytest.skip(reason)
    sidecar = sidecar_factory(persistent_broker, **sidecar_env()).start()
    result = scenarios.broker_outage(persistent_broker, sidecar, events=3000, down_for=30,
                                     rate=600)
    print(result)
    result.check()
    assert result.notes["same_process"] is True
    assert result.notes["failed_connects"] >= 5, result.notes  # it kept trying all along
    connected = events_named(sidecar.log_text(), "mqtt_connected")
    assert len(connected) >= 2 and connected[-1]["session_present"] is True, connected
    assert sidecar.terminate() == 0


def test_silent_network_cut_is_detected_and_survived(
        persistent_broker: Broker, sidecar_factory: SidecarFactory) -> None:
    """A silent 15 s network cut is detected by keep-alive and survived: all 3,000 stored once.

    The link through a proxy stops carrying bytes for 15 s (keepalive 5 s) in the middle of 3,000
    events: the sidecar notices by its keep-alive, reconnects once the link is back, and stores all
    3,000 once (what it had acked into the dead link is redelivered and dropped)."""
    with NetworkProxy(persistent_broker.port) as proxy:
        sidecar = sidecar_factory(persistent_broker, **sidecar_env(
            mqtt__port=proxy.port, mqtt__keepalive=5)).start()
        result = scenarios.network_cut(proxy, persistent_broker, sidecar, events=3000,
                                       cut_for=15, rate=600)
        print(result)
        result.check()
        assert result.notes["noticed_after"] <= 15, result.notes
        assert "mqtt_session_lost" not in sidecar.log_text()
        assert sidecar.terminate() == 0
