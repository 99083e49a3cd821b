"""The health rule of ``/healthz``: the watchdog's stall rule (``sidecar.systemd.stall_after``)
for the writer, and a grace period for the broker connection."""

from __future__ import annotations

import time

import msgspec

from sidecar.observe.sources import Sources


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The ``/healthz`` body; ``healthy`` False (with ``problems``) answers 503."""

    healthy: bool
    problems: list[str]
    writer_alive: bool
    writer_idle_s: float
    broker_connected: bool
    broker_disconnected_s: float | None
    last_commit_age_s: float | None
    queue_depth: int


def check(sources: Sources) -> Health:
    now = sources.clock()
    problems: list[str] = []
    alive = sources.writer_alive()
    idle = max(0.0, now - sources.writer_heartbeat())
    if not alive:
        problems.append("the writer thread has stopped")
    elif idle > sources.stall_after:
        problems.append(f"writer stalled for {idle:.1f}s (limit {sources.stall_after:.1f}s)")
    away_since = sources.broker_disconnected_at()
    away = None if away_since is None else max(0.0, now - away_since)
    if away is not None and away > sources.broker_grace:
        problems.append(f"broker disconnected for {away:.0f}s (grace {sources.broker_grace:.0f}s)")
    last = sources.stats.last_commit_at
    return Health(healthy=not problems, problems=problems, writer_alive=alive,
                  writer_idle_s=round(idle, 3), broker_connected=away_since is None,
                  broker_disconnected_s=None if away is None else round(away, 3),
                  last_commit_age_s=None if last is None else round(time.time() - last, 3),
                  queue_depth=sources.queue_depth())
