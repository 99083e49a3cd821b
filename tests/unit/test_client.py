"""sidecar.client's stream bookkeeping without a broker: gaps and short counts are errors."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from sidecar.client import Replay
from sidecar.errors import RequestError


class _Client:
    timeout = 1.0

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel(self, stream: str) -> dict[str, Any]:
        self.cancelled.append(stream)
        return {}

    def _forget(self, key: str) -> None:
        pass

    def _stream_of(self, key: str) -> str | None:
        return None


def replay_of(*messages: dict[str, Any]) -> tuple[Replay, _Client]:
    inbox: queue.Queue[dict[str, Any]] = queue.Queue()
    for message in messages:
        inbox.put(message)
    client = _Client()
    return Replay(client, "k", inbox, idle_timeout=1.0), client  # type: ignore[arg-type]


def ev(seq: int) -> dict[str, Any]:
    return {"seq": seq, "id": f"e{seq}"}


def test_replay_yields_events_and_ends_at_done():
    """Events come out in order; done ends the iteration and is kept with the count."""
    replay, client = replay_of(
        {"status": "ok", "stream": "s", "seq": 1, "events": [ev(1), ev(2)]},
        {"status": "ok", "stream": "s", "caught_up": True, "last": 2},
        {"status": "ok", "stream": "s", "done": True, "count": 2, "last": 2, "reason": "x"})
    assert [e["seq"] for e in replay] == [1, 2]
    assert replay.caught_up.is_set() and replay.done is not None and replay.last == 2
    assert client.cancelled == []


def test_missing_stream_message_raises_lost_and_cancels():
    """A gap in the message numbers raises RequestError('lost') and cancels the stream."""
    replay, client = replay_of(
        {"status": "ok", "stream": "s", "seq": 1, "events": [ev(1)]},
        {"status": "ok", "stream": "s", "seq": 3, "events": [ev(5)]})
    with pytest.raises(RequestError) as info:
        list(replay)
    assert info.value.code == "lost" and "after=1" in info.value.message
    assert client.cancelled == ["s"]


def test_done_with_a_different_count_raises_lost():
    """done announcing more events than arrived is reported, not silently accepted."""
    replay, _ = replay_of(
        {"status": "ok", "stream": "s", "seq": 1, "events": [ev(1)]},
        {"status": "ok", "stream": "s", "done": True, "count": 4, "last": 4})
    with pytest.raises(RequestError, match="received 1 events"):
        list(replay)


def test_error_answer_raises_with_its_code():
    """An error answer to the replay request raises RequestError with the sidecar's code."""
    replay, client = replay_of({"status": "error", "error": {"code": "busy", "message": "m"}})
    with pytest.raises(RequestError) as info:
        list(replay)
    assert info.value.code == "busy" and client.cancelled == []


def test_silence_raises_timeout():
    """No message within the idle timeout raises TimeoutError."""
    inbox: queue.Queue[dict[str, Any]] = queue.Queue()
    replay = Replay(_Client(), "k", inbox, idle_timeout=0.05)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        list(replay)
