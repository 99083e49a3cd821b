"""A requester that vanishes frees its replay stream: the CLI killed by SIGKILL, SIGTERM or
SIGHUP (its Will, or its own cancel), a leased stream nobody renews, cancel by owner, and a
renewed live stream that is NOT ended. A real Mosquitto, one in-process sidecar for the module,
a real SQLite file; the CLI runs as a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.client import SidecarClient
from tests.conftest import ROOT, wait_until
from tests.support.broker import Broker
from tests.support.inprocess import Running, daemon
from tests.support.publisher import Message, Publisher
from tests.system.test_handlers import Requester


@dataclass
class Env:
    broker: Broker
    run: Running
    client: SidecarClient

    def streams(self) -> int:
        """``replay_streams`` of the daemon's stats answer."""
        count: int = self.client.stats()["replay_streams"]
        return count


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("leases")
    with daemon(tmp) as d:
        client = d.client(lease=None)
        try:
            yield Env(d.broker, d.run, client)
        finally:
            client.close()


@pytest.fixture
def idle(env: Env) -> Env:
    """The module's sidecar with no stream left over from an earlier test."""
    wait_until(lambda: env.streams() == 0, timeout=60, interval=0.2, message="no stream running")
    return env


def stream_messages(req: Requester, stream: str | None = None) -> list[dict[str, Any]]:
    """The stream messages the watcher saw (of one stream, when given)."""
    with req._lock:
        bodies = [body for _, body, _ in req.answers if isinstance(body, dict)]
    return [b for b in bodies if "stream" in b and (stream is None or b["stream"] == stream)]


def done_of(req: Requester, stream: str) -> dict[str, Any] | None:
    return next((m for m in stream_messages(req, stream) if m.get("done")), None)


def hold(seconds: float, check: Callable[[], object], message: str) -> None:
    """Poll ``check`` for ``seconds``: it must stay true the whole time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), message
        time.sleep(0.1)


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGKILL", "SIGTERM", "SIGHUP"])
def test_a_killed_live_replay_cli_frees_its_stream(idle: Env, sig: signal.Signals):
    """`replay --live` killed by SIGKILL, SIGTERM or SIGHUP leaves no stream in the daemon: it is
    cancelled (the Will, or the CLI's own cancel), long before the CLI's 30 s lease would end it."""
    watcher = Requester(idle.broker, listen="kairo-sidecar/response/#")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "replay", "--live", "--type", "kairo.nothing.*",
         "--host", idle.broker.host, "--port", str(idle.broker.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    try:
        caught_up = wait_until(lambda: next((m for m in stream_messages(watcher)
                                             if m.get("caught_up")), None),
                               timeout=30, message="the CLI's stream caught up")
        assert isinstance(caught_up, dict)
        stream = caught_up["stream"]
        assert idle.streams() == 1
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
        wait_until(lambda: idle.streams() == 0, timeout=60, interval=0.2,
                   message="replay_streams back to 0")
        done = wait_until(lambda: done_of(watcher, stream), message="the stream's done")
        assert isinstance(done, dict) and done["reason"] == "cancelled"
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 128 + sig, stderr
            assert b"Traceback" not in stderr and b"error" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watcher.close()


# ------------------------------------------------------------------------------ leases
def test_a_leased_stream_ends_when_renewals_stop(idle: Env):
    """A raw MQTT requester renews a 1 s lease for a while (the stream keeps running), then stops
    renewing while staying connected: the stream ends with done reason lease_expired."""
    req = Requester(idle.broker)
    try:
        req.send("replay", {"type": "kairo.nothing.*", "live": True, "lease": 1},
                 response_topic="reply/lease/raw")
        caught_up = wait_until(lambda: next((m for m in stream_messages(req)
                                             if m.get("caught_up")), None), message="caught_up")
        assert isinstance(caught_up, dict)
        stream = caught_up["stream"]
        renewed_until = time.monotonic() + 3.0  # three lease periods
        while time.monotonic() < renewed_until:
            req.send("replay/renew", {"stream": stream}, response_topic="reply/lease/renew")
            assert done_of(req, stream) is None, "a renewed stream ended"
            time.sleep(0.25)
        renewals = req.on("reply/lease/renew")
        assert renewals[0][1] == {"status": "ok", "data": {"stream": stream, "lease": 1.0}}
        done = wait_until(lambda: done_of(req, stream), message="done after the lease lapsed")
        assert isinstance(done, dict)
        assert (done["reason"], done["count"]) == ("lease_expired", 0)
        assert req.client.is_connected()
        wait_until(lambda: idle.streams() == 0, message="the stream gone")
        req.send("replay/renew", {"stream": stream}, response_topic="reply/lease/late")
        (_, late, _), = req.on("reply/lease/late")
        assert late["error"]["code"] == "not_found"
    finally:
        req.close()


def test_a_renewed_live_stream_outlives_many_leases(idle: Env):
    """A SidecarClient with a 1 s lease keeps its live stream for 5 s (its thread renews it), new
    events still flow through it, and only the cancel ends it."""
    client = SidecarClient(idle.broker.host, idle.broker.port, lease=1.0).connect()
    try:
        replay = client.replay(type="kairo.leased.*", live=True)
        got: list[dict[str, Any]] = []
        consumer = threading.Thread(target=lambda: got.extend(replay.messages()), daemon=True)
        consumer.start()
        wait_until(lambda: replay.caught_up.is_set(), message="caught_up")
        hold(5.0, lambda: replay.done is None and idle.streams() == 1,
             "the renewed stream ended")
        with Publisher(idle.broker.host, idle.broker.port) as pub:
            pub.publish([Message("leased-1", "kairo/leased/1", json.dumps(
                {"id": "leased-1", "type": "kairo.leased.event", "payload": {}}).encode())])
            pub.wait_all(30)
        wait_until(lambda: replay.count == 1, message="the new event through the live stream")
        replay.cancel()
        consumer.join(10)
        assert replay.done is not None and replay.done["reason"] == "cancelled"
    finally:
        client.close()


# ------------------------------------------------------------------------------ cancel by owner
def test_cancel_by_owner_ends_that_owners_streams_only(idle: Env):
    """replay/cancel with an owner ends every stream opened with it and no other; a cancel naming
    neither a stream nor an owner (or both) is a bad request."""
    req = Requester(idle.broker)
    try:
        for i, owner in enumerate(["o-1", "o-1", "o-2"]):
            req.send("replay", {"type": "kairo.nothing.*", "live": True, "owner": owner},
                     response_topic=f"reply/owner/{i}")
        wait_until(lambda: sum(bool(m.get("caught_up")) for m in stream_messages(req)) == 3,
                   message="three streams caught up")
        ids = [req.on(f"reply/owner/{i}")[0][1]["stream"] for i in range(3)]
        req.send("replay/cancel", {"owner": "o-1"}, response_topic="reply/owner/cancel")
        (_, answer, _), = req.on("reply/owner/cancel")
        assert answer["data"]["owner"] == "o-1" and answer["data"]["cancelled"] is True
        assert sorted(answer["data"]["streams"]) == sorted(ids[:2])
        for stream in ids[:2]:
            done = wait_until(lambda s=stream: done_of(req, s), message="done of o-1's streams")
            assert isinstance(done, dict) and done["reason"] == "cancelled"
        assert done_of(req, ids[2]) is None and idle.streams() == 1
        req.send("replay/cancel", {}, response_topic="reply/owner/neither")
        req.send("replay/cancel", {"owner": "o-2", "stream": ids[2]},
                 response_topic="reply/owner/both")
        for topic in ("reply/owner/neither", "reply/owner/both"):
            (_, bad, _), = req.on(topic)
            assert (bad["error"]["code"], bad["error"]["field"]) == ("bad_request", "stream")
        req.send("replay/cancel", {"owner": "o-2"}, response_topic="reply/owner/cancel2")
        req.on("reply/owner/cancel2")
        wait_until(lambda: done_of(req, ids[2]), message="done of o-2's stream")
    finally:
        req.close()
