"""Reading a daemon's figures back: ``/metrics`` fetched and parsed into ``Sample``s (what
``kairo-sidecar top`` shows), or the ``stats`` answer turned into the same ``Sample``."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from sidecar.errors import SidecarError

P = "kairo_sidecar_"


class ScrapeError(SidecarError):
    """The daemon's ``/metrics`` could not be read."""

    exit_code = 5


class Sample(msgspec.Struct, kw_only=True):
    """One reading of the figures ``top`` shows (None: the source does not have it)."""

    at: float  # time.monotonic() of the reading
    source: str  # "http" or "mqtt"
    uptime_s: float | None = None
    events_stored: float = 0
    received: float = 0
    duplicates: float = 0
    dead_letters: float = 0
    queue_depth: float = 0
    inflight_acks: float | None = None
    commits: float | None = None  # commit_seconds count
    commit_seconds_sum: float | None = None
    batch_rows_sum: float | None = None
    last_commit_lag_s: float | None = None
    written_bytes: float | None = None
    database_bytes: float = 0
    wal_bytes: float = 0
    replay_streams: float = 0
    broker_connected: float | None = None
    writer_up: float | None = None
    purge_running: float | None = None


def parse_metrics(text: str, *, at: float | None = None) -> Sample:
    """The ``kairo_sidecar_*`` samples of a ``/metrics`` page (labels summed)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(P) and not s.name.endswith("_bucket"):
                key = s.name[len(P):]
                values[key] = values.get(key, 0.0) + s.value
    now = time.time()
    started = values.get("start_time_seconds")
    return Sample(
        at=time.monotonic() if at is None else at, source="http",
        uptime_s=None if started is None else max(0.0, now - started),
        events_stored=values.get("events_stored_total", 0), received=values.get("received_total", 0),
        duplicates=values.get("duplicates_total", 0), dead_letters=values.get("dead_letters_total", 0),
        queue_depth=values.get("queue_depth", 0), inflight_acks=values.get("inflight_acks"),
        commits=values.get("commit_seconds_count"),
        commit_seconds_sum=values.get("commit_seconds_sum"),
        batch_rows_sum=values.get("batch_rows_sum"),
        last_commit_lag_s=values.get("last_commit_lag_seconds"),
        written_bytes=values.get("process_written_bytes_total"),
        database_bytes=values.get("database_bytes", 0), wal_bytes=values.get("wal_bytes", 0),
        replay_streams=values.get("replay_streams", 0),
        broker_connected=values.get("broker_connected"), writer_up=values.get("writer_up"),
        purge_running=values.get("purge_running"))


def fetch_metrics(url: str, *, token: str | None = None, timeout: float = 5.0) -> str:
    """GET ``url`` (``http://host:port/metrics``) with the bearer ``token`` if any."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return str(answer.read().decode())
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"{url}: answered HTTP {exc.code}"
                          + (" (wrong or missing [http] token)" if exc.code == 401 else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"{url}: cannot connect ({reason}); is the daemon running with "
                          "[http] listen set?") from None


def from_stats(answer: dict[str, Any], *, at: float | None = None) -> Sample:
    """The ``stats`` answer (through the broker) as a ``Sample``: no histograms there."""
    lag = answer.get("last_commit_lag_ms")
    return Sample(
        at=time.monotonic() if at is None else at, source="mqtt", uptime_s=answer.get("uptime_s"),
        events_stored=answer.get("events_stored", 0), received=answer.get("received", 0),
        duplicates=answer.get("duplicates", 0), dead_letters=answer.get("dead_letters", 0),
        queue_depth=answer.get("queue_depth", 0),
        last_commit_lag_s=None if lag is None else lag / 1000,
        database_bytes=answer.get("database_bytes", 0), wal_bytes=answer.get("wal_bytes", 0),
        replay_streams=answer.get("replay_streams", 0))
