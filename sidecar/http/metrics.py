"""``/metrics``: the daemon's figures in the Prometheus text format (``prometheus_client``).

A collector reads the counters at scrape time (``sidecar.observe.sources``): nothing on the
hot path is instrumented, no lock is taken there. Every name is ``kairo_sidecar_...`` and
stable (README "Metrics and health" lists them; ``deploy/grafana-kairo-sidecar.json`` uses
them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.core.reasons import DEAD_LETTER_KINDS
from sidecar.core.stats import Buckets
from sidecar.http.server import Request, Response, Route
from sidecar.observe.sources import Sources

P = "kairo_sidecar_"
PROC_IO = Path("/proc/self/io")


def written_bytes(path: Path = PROC_IO) -> int | None:
    """``write_bytes`` of ``/proc/self/io``: what this process caused to be written to storage
    (None where the file does not exist or the kernel hides it)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "write_bytes":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    pairs = buckets.cumulative()
    le = [("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in pairs]
    return HistogramMetricFamily(name, doc, buckets=le, sum_value=buckets.sum)


class SidecarCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        src = self._sources
        s = src.stats
        yield InfoMetricFamily(P + "build", "kairo-sidecar version", value={"version": __version__})
        yield GaugeMetricFamily(P + "start_time_seconds", "when the daemon started (Unix time)",
                                value=s.started_at)
        yield CounterMetricFamily(P + "received", "messages handed to the writer", value=s.received)
        yield CounterMetricFamily(P + "events_stored", "new events stored", value=s.events_stored)
        yield CounterMetricFamily(P + "duplicates", "redelivered events not stored again",
                                  value=s.duplicates)
        dead = CounterMetricFamily(P + "dead_letters", "messages stored as dead letters, by kind "
                                   "of reason", labels=["reason"])
        kinds = dict(s.dead_letter_kinds)
        for kind in (*DEAD_LETTER_KINDS, *sorted(set(kinds) - set(DEAD_LETTER_KINDS))):
            dead.add_metric([kind], kinds.get(kind, 0))
        yield dead
        yield CounterMetricFamily(P + "qos0_dropped", "QoS 0 messages dropped on a full queue",
                                  value=s.qos0_dropped)
        yield CounterMetricFamily(P + "write_errors", "failed batch writes (retried)",
                                  value=s.write_errors)
        yield GaugeMetricFamily(P + "queue_depth", "deliveries waiting for the writer",
                                value=src.queue_depth())
        yield GaugeMetricFamily(P + "inflight_acks", "QoS 1 messages received and not acked yet",
                                value=src.inflight())
        yield _histogram(P + "batch_rows", "messages per committed batch", s.batch_rows)
        yield _histogram(P + "commit_seconds", "time of one batch's transaction, commit included",
                         s.commit_seconds)
        if s.last_commit_lag_ms is not None:
            yield GaugeMetricFamily(P + "last_commit_lag_seconds", "receive to commit of the "
                                    "oldest message of the last batch", value=s.last_commit_lag_ms / 1000)
        if s.last_commit_at is not None:
            yield GaugeMetricFamily(P + "last_commit_time_seconds", "when the last batch "
                                    "committed (Unix time)", value=s.last_commit_at)
        idle = max(0.0, src.clock() - src.writer_heartbeat())
        yield GaugeMetricFamily(P + "writer_up", "1 while the writer thread runs and is not "
                                "stalled", value=int(src.writer_alive() and idle <= src.stall_after))
        yield GaugeMetricFamily(P + "broker_connected", "1 while connected to the broker",
                                value=int(src.broker_disconnected_at() is None))
        written = written_bytes()
        if written is not None:
            yield CounterMetricFamily(P + "process_written_bytes", "bytes this process caused to "
                                      "be written to storage (/proc/self/io write_bytes)",
                                      value=written)
        db_bytes, wal_bytes = src.store.file_sizes()
        yield GaugeMetricFamily(P + "database_bytes", "size of the database file", value=db_bytes)
        yield GaugeMetricFamily(P + "wal_bytes", "size of the write-ahead log", value=wal_bytes)
        yield GaugeMetricFamily(P + "replay_streams", "replay and kv watch streams running",
                                value=src.replay_streams())
        api = CounterMetricFamily(P + "api_requests", "API requests answered, by op and status "
                                  "(ok, an error code, or dropped)", labels=["op", "status"])
        for (op, status), n in sorted(src.requests().items()):
            api.add_metric([op, status], n)
        yield api
        running, purge = src.purge()
        yield GaugeMetricFamily(P + "purge_running", "1 while a retention purge runs",
                                value=int(running))
        deleted = GaugeMetricFamily(P + "purge_deleted_events", "events deleted by the running "
                                    "purge so far, else by the last one, by rule",
                                    labels=["rule"])
        deleted.add_metric(["age"], purge.by_age if purge else 0)
        deleted.add_metric(["count"], purge.by_count if purge else 0)
        deleted.add_metric(["size"], purge.by_size if purge else 0)
        yield deleted
        if purge is not None:
            yield GaugeMetricFamily(P + "purge_steps", "steps of the running (else last) purge",
                                    value=purge.steps)
        yield GaugeMetricFamily(P + "scrape_time_seconds", "when this page was made (Unix time)",
                                value=time.time())


def metrics_route(sources: Sources) -> Route:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SidecarCollector(sources))

    def route(request: Request) -> Response:
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(registry))

    return route
