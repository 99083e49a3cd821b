"""Replay streams on a real SQLite file with a fake publisher: order, flow control, pacing,
cancel, max_duration and live forwarding (no broker: the publisher is under the test's control)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from sidecar.api.protocol import ReplayRequest
from sidecar.api.replay import CommitSignal, Pacer, ReplayStream
from sidecar.config import DatabaseConfig
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader
from tests.conftest import wait_until
from tests.support.stores import Store


class FakeSent:
    def __init__(self, auto: bool) -> None:
        self._done = threading.Event()
        if auto:
            self._done.set()

    def ack(self) -> None:
        self._done.set()

    def is_published(self) -> bool:
        return self._done.is_set()

    def wait_for_publish(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)


class FakeSend:
    """Records every message; acks at once unless ``auto_ack`` is off (then the test acks)."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.bodies: list[dict[str, Any]] = []
        self.sent: list[FakeSent] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> FakeSent:
        sent = FakeSent(self.auto_ack)
        with self._lock:
            self.bodies.append(json.loads(msgspec.json.encode(body)))
            self.sent.append(sent)
        return sent

    def unacked(self) -> int:
        with self._lock:
            return sum(not s.is_published() for s in self.sent)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for b in self.bodies for e in b.get("events", ())]

    def done(self) -> dict[str, Any] | None:
        with self._lock:
            return next((b for b in self.bodies if b.get("done")), None)


@pytest.fixture
def store(any_store: Store) -> Iterator[tuple[DatabaseConfig, Store]]:
    """A migrated store on each engine (every replay test runs on SQLite and PostgreSQL)."""
    yield any_store.config, any_store


def insert(path: Store, n: int, *, start: int = 0, created_step: int = 1, corr: str = "c1") -> None:
    path.insert_events([
        {"id": f"e{i}", "topic": "kairo/t", "type": "kairo.t", "source": "s",
         "payload": json.dumps({"i": i}), "metadata": "{}",
         "created_at": 1_000_000 + i * created_step, "received_at": 1_000_000 + i,
         "correlation_id": corr}
        for i in range(start, start + n)])


def stream(config: DatabaseConfig, send: FakeSend, *, commits: CommitSignal | None = None,
           inflight: int = 4, max_duration: float = 30.0, max_bytes: int = 1 << 20,
           **options: Any) -> ReplayStream:
    request = msgspec.convert(options, ReplayRequest)
    return ReplayStream("s1", request, conditions(request),
                        reader=Reader(open_reader(config)), send=send,
                        commits=commits or CommitSignal(), inflight=inflight,
                        max_duration=max_duration, max_bytes=max_bytes, fmt="json")


def test_replay_sends_every_event_in_order_and_ends_with_done(store):
    """All matching events go out in seq order, in batches, then one done with the count."""
    config, path = store
    insert(path, 1050)
    send = FakeSend()
    s = stream(config, send, batch=100, correlation_id="c1", transaction="t-9")
    s.start()
    assert s.join(10)
    seqs = [e["seq"] for e in send.events()]
    assert seqs == list(range(1, 1051))
    assert [b["seq"] for b in send.bodies if "events" in b] == list(range(1, 12))
    assert send.bodies[-1] == {"status": "ok", "stream": "s1", "done": True, "count": 1050,
                               "last": 1050, "reason": "complete", "transaction": "t-9"}


def test_replay_waits_when_inflight_messages_are_unacked(store):
    """With acks withheld, a stream stops at `inflight` unacked messages and resumes on acks."""
    config, path = store
    insert(path, 100)
    send = FakeSend(auto_ack=False)
    s = stream(config, send, inflight=3, batch=10)
    s.start()
    wait_until(lambda: len(send.sent) == 3, message="three messages sent")
    assert not s.join(0.3)  # still blocked, not finished
    assert len(send.sent) == 3 and send.unacked() == 3
    send.sent[0].ack()
    wait_until(lambda: len(send.sent) == 4, message="one more after one ack")
    send.auto_ack = True
    for sent in list(send.sent):
        sent.ack()
    assert s.join(10)
    assert len(send.events()) == 100 and send.done()["count"] == 100


def test_message_size_cap_splits_batches(store):
    """A batch that would exceed max_bytes is split; every event still goes out once."""
    config, path = store
    insert(path, 50)
    send = FakeSend()
    s = stream(config, send, batch=50, max_bytes=4096)
    s.start()
    assert s.join(10)
    batches = [len(b["events"]) for b in send.bodies if "events" in b]
    assert len(batches) > 1 and sum(batches) == 50


def test_cancel_ends_stream_with_done_reason_cancelled(store):
    """cancel() stops a rate-limited stream early; done carries the events actually sent."""
    config, path = store
    insert(path, 500)
    send = FakeSend()
    s = stream(config, send, batch=10, rate=50)
    s.start()
    wait_until(lambda: len(send.events()) >= 10, message="first batch")
    s.cancel()
    assert s.join(5)
    done = send.done()
    assert done is not None and done["reason"] == "cancelled"
    assert done["count"] == len(send.events()) < 500
    assert done["last"] == send.events()[-1]["seq"]


def test_max_duration_ends_a_live_stream(store):
    """A live stream with nothing new ends by itself at max_duration, after caught_up."""
    config, path = store
    insert(path, 3)
    send = FakeSend()
    s = stream(config, send, live=True, max_duration=0.3)
    s.start()
    assert s.join(10)
    kinds = [("caught_up" in b, "done" in b) for b in send.bodies]
    assert kinds[-2:] == [(True, False), (False, True)]
    assert send.done()["reason"] == "max_duration" and send.done()["count"] == 3


def test_an_unrenewed_lease_ends_the_stream(store):
    """A live stream with a 1 s lease that nobody renews ends by itself: reason lease_expired."""
    config, path = store
    insert(path, 3)
    send = FakeSend()
    s = stream(config, send, live=True, lease=1)
    s.start()
    assert s.join(10)
    done = send.done()
    assert done is not None and (done["reason"], done["count"]) == ("lease_expired", 3)


def test_a_lease_also_ends_a_paced_stream_waiting_for_its_next_event(store):
    """A stream sleeping until an event is due (original pace) ends when its lease lapses."""
    config, path = store
    insert(path, 3, created_step=3_600_000)  # an hour between events
    send = FakeSend()
    s = stream(config, send, pace="original", lease=1)
    s.start()
    assert s.join(10)
    done = send.done()
    assert done is not None and (done["reason"], done["count"]) == ("lease_expired", 1)


def test_renewals_keep_a_leased_stream_running(store):
    """Renewed every 0.2 s, a stream with a 1 s lease outlives three leases; cancel ends it."""
    config, path = store
    insert(path, 3)
    send = FakeSend()
    s = stream(config, send, live=True, lease=1)
    s.start()
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        s.renew()
        assert not s.join(0.2), "the renewed stream ended"
    s.cancel()
    assert s.join(5)
    assert send.done()["reason"] == "cancelled"


def test_live_stream_forwards_events_committed_after_caught_up(store):
    """After caught_up, a commit signal makes the stream send the new matching events."""
    config, path = store
    insert(path, 5)
    send = FakeSend()
    commits = CommitSignal()
    s = stream(config, send, commits=commits, live=True, correlation_id="c1")
    s.start()
    wait_until(lambda: any(b.get("caught_up") for b in send.bodies), message="caught_up")
    insert(path, 5, start=5)
    insert(path, 3, start=10, corr="other")  # not matching
    commits.notify()
    wait_until(lambda: len(send.events()) == 10, message="live events")
    s.cancel()
    assert s.join(5)
    assert [e["id"] for e in send.events()] == [f"e{i}" for i in range(10)]


def test_pacer_rate_and_original_pace():
    """Rate spaces batches by events/rate; original pace keeps recorded gaps divided by speed."""
    now = [100.0]
    pacer = Pacer(rate=10, original=False, speed=1.0, clock=lambda: now[0])
    assert pacer.due_for_batch(0) == 100.0 and pacer.due_for_batch(20) == 102.0
    paced = Pacer(rate=None, original=True, speed=2.0, clock=lambda: now[0])
    assert paced.due_for_event(5_000) == 100.0  # the first event goes at once
    assert paced.due_for_event(9_000) == 102.0  # 4 s recorded, at double speed
    assert paced.due_for_event(1_000) == 100.0  # out-of-order times never wait
