"""Request/response: route each request to a worker, answer it where the requester asked.

The paho network thread only calls ``receive`` (the broker's ``on_request``: the message
becomes a ``RequestMessage``) and so ``submit`` (a bounded queue; when it is full the answer is
``busy``). A small pool of worker threads decodes, validates and answers requests, each on its
own read connection; a replay gets its own thread (``replay.ReplayStream``). Nothing here
imports paho: answers go out through the ``publish`` callable ``app`` passes in.

Where an answer goes: the MQTT 5 Response Topic (Correlation Data echoed), else the request's
``reply_to``, else ``<base>/response/<op>``. A destination that is not a valid topic name, or
that the sidecar itself stores or serves (the event topics, ``<base>/request/#``), is refused:
the request is logged as ``request_dropped`` and not answered.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import msgspec

from sidecar import __version__
from sidecar.api import protocol as requests
from sidecar.api.kv_watch import KvWatch
from sidecar.api.protocol import (
    CancelRequest,
    GetRequest,
    KvDeleteRequest,
    KvGetRequest,
    KvListRequest,
    KvPutRequest,
    KvWatchRequest,
    LatestRequest,
    QueryRequest,
    RenewRequest,
    ReplayRequest,
    RequestMessage,
    SearchRequest,
    StatsRequest,
    request_from_inbound,
)
from sidecar.api.replay import CommitSignal, ReplayStream, Sent
from sidecar.config import ApiConfig
from sidecar.core import kv, topics
from sidecar.core.filters import Filter
from sidecar.core.inbound import InboundMessage
from sidecar.core.projections import Projection, refuse_owned
from sidecar.core.search_query import parse
from sidecar.core.stats import Stats
from sidecar.errors import FilterError, RequestError, StorageError
from sidecar.logs import RateLimited, get_logger
from sidecar.storage.queries import conditions, json_path
from sidecar.storage.reads import Reader
from sidecar.storage.search import SearchUnavailable

log = get_logger("sidecar.handlers")

ANSWER_WAIT = 5.0  # seconds a worker waits for the broker to take an answer


def check_limit(value: int, field: str, max_limit: int) -> None:
    """``bad_request`` on ``field`` when ``value`` is over ``api.max_limit``."""
    if value > max_limit:
        raise RequestError("bad_request", f"{field}: must be <= {max_limit} (api.max_limit)",
                           field=field)


def query_page(reader: Reader, request: QueryRequest, *, fmt: str, max_limit: int,
               max_bytes: int) -> requests.QueryPage:
    """The ``query`` answer for ``request`` on ``reader`` (the calling thread's read
    connection): at most ``request.limit`` events and ``max_bytes`` of answer. The web console
    (``sidecar.http.console``) answers its pages with it too."""
    check_limit(request.limit, "limit", max_limit)
    # Read no further than the answer can hold: large events never fill memory.
    cond = conditions(request, indexed=reader.path_indexes() if request.where else set())
    found = reader.answer_page(cond, limit=request.limit, order=request.order, max_bytes=max_bytes)
    return requests.QueryPage([requests.event_out(e, fmt) for e in found.events], found.next,
                              list(cond.unindexed) or None)


def search_page(reader: Reader, request: SearchRequest, *, fmt: str, max_limit: int,
                max_bytes: int, rank_window: int) -> requests.SearchPage:
    """The ``search`` answer (``storage.search``): the query parsed in our words first (a
    malformed one is ``FilterError`` on ``query``), then a page of hits, each with its event;
    no more events than ``max_bytes`` holds (``next`` then resumes). Search off or not on this
    engine: ``RequestError`` ``search_disabled``/``search_unavailable``. The web console's
    search box answers with it too."""
    check_limit(request.limit, "limit", max_limit)
    fts = parse(request.query)
    unpaged = cast(Filter, msgspec.structs.replace(request, after=None))
    cond = conditions(unpaged, indexed=reader.path_indexes() if request.where else set())
    marks = (request.highlight[0], request.highlight[1]) if request.highlight else ("[", "]")
    try:
        found = reader.search_page(fts, cond, order=request.order, limit=request.limit,
                                   after=request.after, marks=marks, max_bytes=max_bytes,
                                   rank_window=rank_window)
    except SearchUnavailable as exc:
        raise RequestError(exc.code, str(exc)) from None
    state = found.state
    return requests.SearchPage(
        [requests.SearchHit(requests.event_out(event, fmt), hit.snippet, hit.rank)
         for hit, event in found.hits], found.next, state.complete, state.backfilled_to,
        state.live_from, found.window)


def get_event(reader: Reader, event_id: str, *, fmt: str) -> requests.EventOut:
    """The ``get`` answer: the event ``event_id``, or ``not_found`` naming ``id``."""
    row = reader.get(event_id)
    if row is None:
        raise RequestError("not_found", f"no event with id {event_id!r}", field="id")
    return requests.event_out(row, fmt)


class Publish(Protocol):
    def __call__(self, topic: str, payload: bytes, *, correlation_data: bytes | None,
                 content_type: str) -> Sent: ...


@dataclass(frozen=True)
class Reply:
    """Where and how one request is answered."""

    topic: str
    correlation_data: bytes | None
    fmt: str
    transaction: Any
    publish: Publish

    def send(self, body: Any) -> Sent:
        """Encode ``body`` (an answer Struct, or a replay message) in the request's format."""
        return self.publish(self.topic, requests.encode(body, self.fmt),
                            correlation_data=self.correlation_data,
                            content_type=requests.CONTENT_TYPES[self.fmt])


_STREAMING = object()


class _HeldElsewhere(Exception):
    """In a shared group: a ``replay/cancel`` or ``replay/renew`` for a stream another member
    started. Every member receives those; the one that started the stream answers (``not_found``
    once it has ended), the rest stay silent. A member knows its streams by the first
    ``_TAG_LENGTH`` characters of their id, a tag drawn at start."""


_TAG_LENGTH = 8


class Handlers:
    """The worker pool and the registry of running replay streams."""

    def __init__(self, config: ApiConfig, reader: Reader, *, publish: Publish, stats: Stats,
                 commits: CommitSignal, event_topics: Sequence[str],
                 queue_depth: Callable[[], int] = lambda: 0,
                 disk_guard: Callable[[], dict[str, Any] | None] = lambda: None,
                 kv_write: Callable[[kv.KvWrite], kv.KvEntry | None] | None = None,
                 kv_max_value_bytes: int = 65536, shared_group: bool = False,
                 projections: Sequence[Projection] = (),
                 search_rank_window: int = 2000) -> None:
        self._config = config
        self._rank_window = search_rank_window  # [search] rank_window
        self._shared = shared_group  # one of several sidecars: cancel/renew reach every member
        self._tag = uuid.uuid4().hex[:_TAG_LENGTH]  # starts the id of every stream started here
        self._kv_write = kv_write  # the writer's ``kv``: applied on its thread, waits for durable
        self._kv_max_value_bytes = kv_max_value_bytes
        self._projections = projections  # their prefixes take no kv/put or kv/delete
        self._reader = reader
        self._publish = publish
        self._stats = stats
        self._commits = commits
        self._event_topics = list(event_topics)
        self._queue_depth = queue_depth
        self._disk_guard = disk_guard  # the disk guard's state (sidecar.diskguard), or None
        self._request_prefix = f"{config.base_topic}/request/"
        self._request_filter = self._request_prefix + "#"
        self._queue: queue.Queue[RequestMessage | None] = queue.Queue(config.queue_size)
        self._workers: list[threading.Thread] = []
        self._streams: dict[str, ReplayStream] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self.dropped = 0  # requests that could not be answered (logged as request_dropped)
        self._answered: dict[tuple[str, str], int] = {}  # (op, "ok" | error code | "dropped")
        self._drop_log = RateLimited(period=10.0, burst=5)
        self._error_log = RateLimited(period=10.0, burst=10)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for i in range(self._config.workers):
            thread = threading.Thread(target=self._work, name=f"kairo-api-{i}", daemon=True)
            thread.start()
            self._workers.append(thread)
        log.info("api_started", base_topic=self._config.base_topic, workers=self._config.workers,
                 max_streams=self._config.max_streams)

    def stop(self, timeout: float = 5.0) -> None:
        """Take no more requests, end every stream (``reason: shutdown``), stop the workers."""
        deadline = time.monotonic() + timeout
        self._stopping = True
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.cancel("shutdown")
        for _ in self._workers:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        for stream in streams:
            stream.join(max(0.0, deadline - time.monotonic()))

    @property
    def active_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    # ------------------------------------------------------------------ network thread
    def receive(self, msg: InboundMessage) -> None:
        """The broker's ``on_request``: a message on ``<base_topic>/request/<op>``."""
        self.submit(request_from_inbound(msg, prefix=self._request_prefix))

    def submit(self, msg: RequestMessage) -> None:
        """Queue a request for a worker; answer ``busy`` at once when the queue is full."""
        if self._stopping:
            return
        if len(msg.payload) > self._config.max_request_bytes:  # answered here, never queued
            self._answer_error(msg, RequestError(
                "too_large", f"request of {len(msg.payload)} bytes exceeds max_request_bytes "
                f"{self._config.max_request_bytes}"))
            return
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            self._answer_error(msg, RequestError("busy", "too many requests waiting; retry"))

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        try:
            while True:
                msg = self._queue.get()
                if msg is None:
                    return
                try:
                    self.handle(msg)
                except Exception:  # a bug must not kill the worker
                    log.exception("request_handling_failed", op=msg.op)
        finally:
            self._reader.close()

    def handle(self, msg: RequestMessage) -> None:
        """Decode, run and answer one request (on the calling thread)."""
        started = time.perf_counter()
        reply = self.reply_for(msg)
        if reply is None:
            return
        status = "ok"
        try:
            if len(msg.payload) > self._config.max_request_bytes:
                raise RequestError("too_large", f"request of {len(msg.payload)} bytes exceeds "
                                   f"max_request_bytes {self._config.max_request_bytes}")
            if msg.op not in requests.REQUEST_TYPES:
                raise RequestError("unknown_op", f"unknown operation {msg.op!r:.200}; one of "
                                   + ", ".join(requests.OPS))
            data = self._dispatch(requests.decode_request(msg), reply)
            if data is not _STREAMING:
                self._delivered(reply.send(requests.ok(data, reply.transaction)))
        except _HeldElsewhere:
            log.debug("request_left_to_group", op=msg.op)
            return
        except (RequestError, FilterError) as exc:
            refusal = requests.bad_filter(exc) if isinstance(exc, FilterError) else exc
            status = refusal.code
            self._log_error(msg.op, refusal)
            reply.send(requests.error(refusal, reply.transaction))
        except StorageError as exc:
            status = "internal"
            log.error("request_failed", op=msg.op, error=str(exc))
            reply.send(requests.error(RequestError("internal", str(exc)), reply.transaction))
        except Exception as exc:  # a bug: still answer, never leave the requester waiting
            status = "internal"
            log.exception("request_failed", op=msg.op)
            reply.send(requests.error(RequestError("internal", f"internal error: {exc!r:.300}"),
                                      reply.transaction))
        self._count(msg.op, status)
        log.debug("request_answered", op=msg.op, ms=round((time.perf_counter() - started) * 1000, 2))

    @staticmethod
    def _delivered(sent: Sent) -> None:
        """Wait (at most ``ANSWER_WAIT``) until the broker has the answer, so a worker never has
        more than one answer (up to ``max_response_bytes``) in the MQTT client's send queue: a
        flood of large queries cannot pile answers up in memory."""
        with contextlib.suppress(RuntimeError, ValueError):  # not connected: paho keeps it queued
            sent.wait_for_publish(ANSWER_WAIT)

    def reply_for(self, msg: RequestMessage) -> Reply | None:
        """Where to answer ``msg``, or ``None`` (logged) when it cannot be answered."""
        if msg.retain:
            self._drop(msg, "retained request (clear it: it would run at every reconnect)")
            return None
        fmt = requests.body_format(msg)
        transaction, reply_to = (None, None)
        if len(msg.payload) <= self._config.max_request_bytes:
            transaction, reply_to = requests.envelope(msg)
        if msg.response_topic is not None:
            destination: Any = msg.response_topic
        elif reply_to is not None:
            destination = reply_to
        else:
            destination = f"{self._config.base_topic}/response/{msg.op}"
        if not isinstance(destination, str) or not topics.valid_topic(destination):
            self._drop(msg, f"answer topic {destination!r:.200} is not a topic name")
            return None
        if self._loops(destination):
            self._drop(msg, f"answer topic {destination!r:.200} is one the sidecar stores or "
                       "serves")
            return None
        return Reply(destination, msg.correlation_data, fmt, transaction, self._publish)

    def _loops(self, topic: str) -> bool:
        if topics.matches(self._request_filter, topic):
            return True
        return any(topics.matches(f, topic) for f in self._event_topics)

    def _count(self, op: str, status: str) -> None:
        """One more answer (or drop) of ``op`` with ``status``; an op we do not know counts as
        ``unknown`` (a requester cannot make the label set grow)."""
        key = (op if op in requests.REQUEST_TYPES else "unknown", status)
        with self._lock:
            self._answered[key] = self._answered.get(key, 0) + 1

    def answered(self) -> dict[tuple[str, str], int]:
        """Requests so far by ``(op, status)``: ``ok``, an error code, or ``dropped``."""
        with self._lock:
            return dict(self._answered)

    def _drop(self, msg: RequestMessage, reason: str) -> None:
        self._count(msg.op, "dropped")
        with self._lock:
            self.dropped += 1
        allowed, suppressed = self._drop_log.allow()
        if allowed:
            log.warning("request_dropped", op=msg.op, reason=reason, suppressed=suppressed)

    def _answer_error(self, msg: RequestMessage, exc: RequestError) -> None:
        reply = self.reply_for(msg)
        if reply is not None:
            self._count(msg.op, exc.code)
            self._log_error(msg.op, exc)
            reply.send(requests.error(exc, reply.transaction))

    def _log_error(self, op: str, exc: RequestError) -> None:
        allowed, suppressed = self._error_log.allow()
        if allowed:
            log.info("request_refused", op=op, code=exc.code, message=exc.message,
                     suppressed=suppressed)

    # ------------------------------------------------------------------ operations
    def _dispatch(self, request: Any, reply: Reply) -> Any:
        match request:
            case QueryRequest():
                return self._query(request, reply.fmt)
            case SearchRequest():
                return self._search(request, reply.fmt)
            case GetRequest():
                return self._get(request, reply.fmt)
            case LatestRequest():
                return self._latest(request, reply.fmt)
            case ReplayRequest():
                return self._replay(request, reply)
            case CancelRequest():
                return self._cancel(request)
            case RenewRequest():
                return self._renew(request)
            case StatsRequest():
                return self.stats()
            case KvGetRequest():
                return self._kv_get(request, reply.fmt)
            case KvPutRequest():
                return self._kv_put(request)
            case KvDeleteRequest():
                return self._kv_delete(request)
            case KvListRequest():
                return self._kv_list(request, reply.fmt)
            case KvWatchRequest():
                return self._kv_watch(request, reply)
        raise RequestError("unknown_op", "unknown request")

    def _check_limit(self, value: int, field: str) -> None:
        check_limit(value, field, self._config.max_limit)

    def _query(self, request: QueryRequest, fmt: str) -> requests.QueryPage:
        return query_page(self._reader, request, fmt=fmt, max_limit=self._config.max_limit,
                          max_bytes=self._config.max_response_bytes)

    def _search(self, request: SearchRequest, fmt: str) -> requests.SearchPage:
        return search_page(self._reader, request, fmt=fmt, max_limit=self._config.max_limit,
                           max_bytes=self._config.max_response_bytes,
                           rank_window=self._rank_window)

    def _latest(self, request: LatestRequest, fmt: str) -> requests.LatestAnswer:
        self._check_limit(request.limit, "limit")
        path = json_path(request.key, field="key")
        cond = conditions(QueryRequest(type=request.type, source=request.source,
                                       where=request.where))
        found = self._reader.latest_page(cond, path, limit=request.limit, after=request.after,
                                         max_bytes=self._config.max_response_bytes)
        return requests.LatestAnswer(request.key, [requests.event_out(e, fmt) for e in found.events],
                                     found.next, found.indexed)

    def _get(self, request: GetRequest, fmt: str) -> requests.EventOut:
        return get_event(self._reader, request.id, fmt=fmt)

    def _max_duration(self, asked: float | None) -> float:
        max_duration = self._config.max_duration
        if asked is not None:
            if asked > max_duration:
                raise RequestError("bad_request", f"max_duration: must be <= {max_duration} "
                                   "(api.max_duration)", field="max_duration")
            max_duration = asked
        return max_duration

    def _open_stream(self, make: Callable[[str], ReplayStream]) -> ReplayStream:
        """Register a new stream (replay or kv watch) under ``api.max_streams``."""
        with self._lock:
            if self._stopping:
                raise RequestError("busy", "the sidecar is stopping")
            if len(self._streams) >= self._config.max_streams:
                raise RequestError("busy", f"{len(self._streams)} replay streams already run "
                                   f"(api.max_streams); retry later")
            stream = make(self._tag + uuid.uuid4().hex[_TAG_LENGTH:])
            self._streams[stream.id] = stream
        return stream

    def _replay(self, request: ReplayRequest, reply: Reply) -> object:
        self._check_limit(request.batch, "batch")
        max_duration = self._max_duration(request.max_duration)
        cond = conditions(request, indexed=self._reader.path_indexes() if request.where else set())
        stream = self._open_stream(lambda sid: ReplayStream(
            sid, request, cond, reader=self._reader, send=reply.send, commits=self._commits,
            inflight=self._config.replay_inflight, max_duration=max_duration,
            max_bytes=self._config.max_response_bytes, fmt=reply.fmt,
            on_end=self._stream_ended))
        log.info("replay_started", stream=stream.id, live=request.live, batch=request.batch,
                 pace=request.pace, rate=request.rate, topic=reply.topic, owner=request.owner,
                 lease=request.lease)
        stream.start()
        return _STREAMING

    # ------------------------------------------------------------------ kv
    def _kv_get(self, request: KvGetRequest, fmt: str) -> requests.KvValue:
        entry = self._reader.kv_get(kv.check_key(request.key))
        if entry is None:
            raise RequestError("not_found", f"no key {request.key!r:.300}", field="key")
        return requests.kv_value(entry, fmt)

    def _kv_apply(self, write: kv.KvWrite) -> kv.KvEntry | None:
        refuse_owned(self._projections, write.key)
        if self._kv_write is None:
            raise RequestError("busy", "the key-value store takes no writes here")
        return self._kv_write(write)

    def _kv_put(self, request: KvPutRequest) -> requests.KvVersion:
        entry = self._kv_apply(kv.put_write(request.key, request.value,
                                            if_version=request.if_version,
                                            max_bytes=self._kv_max_value_bytes))
        assert entry is not None
        return requests.KvVersion(entry.key, entry.version)

    def _kv_delete(self, request: KvDeleteRequest) -> requests.KvVersion:
        entry = self._kv_apply(kv.KvWrite(op="delete", key=kv.check_key(request.key),
                                          if_version=request.if_version))
        assert entry is not None
        return requests.KvVersion(entry.key, entry.version, deleted=True)

    def _kv_list(self, request: KvListRequest, fmt: str) -> requests.KvList:
        self._check_limit(request.limit, "limit")
        found = self._reader.kv_page(prefix=kv.check_prefix(request.prefix), after=request.after,
                                     limit=request.limit)
        return requests.KvList([requests.kv_value(e, fmt) for e in found.entries], found.next)

    def _kv_watch(self, request: KvWatchRequest, reply: Reply) -> object:
        self._check_limit(request.batch, "batch")
        kv.check_prefix(request.prefix)
        max_duration = self._max_duration(request.max_duration)
        stream = self._open_stream(lambda sid: KvWatch(
            sid, request, reader=self._reader, send=reply.send, commits=self._commits,
            inflight=self._config.replay_inflight, max_duration=max_duration,
            max_bytes=self._config.max_response_bytes, fmt=reply.fmt,
            on_end=self._stream_ended))
        log.info("kv_watch_started", stream=stream.id, prefix=request.prefix, topic=reply.topic,
                 owner=request.owner, lease=request.lease)
        stream.start()
        return _STREAMING

    def _stream_ended(self, stream: ReplayStream) -> None:
        with self._lock:
            self._streams.pop(stream.id, None)

    def _cancel(self, request: CancelRequest) -> requests.Cancelled | requests.OwnerCancelled:
        if (request.stream is None) == (request.owner is None):
            raise RequestError("bad_request", "give either stream or owner", field="stream")
        if request.owner is not None:
            return self._cancel_owner(request.owner)
        stream = self._running(request.stream)
        stream.cancel()
        return requests.Cancelled(stream.id)

    def _cancel_owner(self, owner: str) -> requests.OwnerCancelled:
        """Every stream opened with this owner token: what a requester's Will asks for. None
        left is no error (the Will fires whether or not its streams still run)."""
        with self._lock:
            streams = [s for s in self._streams.values() if s.owner == owner]
        if not streams and self._shared:
            raise _HeldElsewhere  # the members running them answer
        for stream in streams:
            stream.cancel()
        if streams:
            log.info("replay_owner_cancelled", owner=owner, streams=len(streams))
        return requests.OwnerCancelled(owner=owner, streams=[s.id for s in streams])

    def _renew(self, request: RenewRequest) -> requests.Renewed:
        stream = self._running(request.stream)
        stream.renew()
        return requests.Renewed(stream.id, stream.lease)

    def _running(self, stream_id: str | None) -> ReplayStream:
        with self._lock:
            stream = None if stream_id is None else self._streams.get(stream_id)
        if stream is None:
            if self._shared and stream_id is not None and not stream_id.startswith(self._tag):
                raise _HeldElsewhere
            raise RequestError("not_found", f"no running stream {stream_id!r}", field="stream")
        return stream

    def stats(self) -> requests.StatsAnswer:
        store = self._reader.figures()
        s = self._stats
        return requests.StatsAnswer(
            version=__version__,
            uptime_s=round(time.time() - s.started_at, 3),
            events_total=store.events_total,
            events_stored=s.events_stored,
            duplicates=s.duplicates,
            dead_letters_total=store.dead_letters_total,
            dead_letters=s.dead_letters,
            qos0_dropped=s.qos0_dropped,
            received=s.received,
            write_errors=s.write_errors,
            queue_depth=self._queue_depth(),
            last_commit_lag_ms=s.last_commit_lag_ms,
            last_commit_at=None if s.last_commit_at is None else int(s.last_commit_at * 1000),
            oldest_event_at=store.oldest_event_at,
            newest_event_at=store.newest_event_at,
            database_bytes=store.database_bytes,
            wal_bytes=store.wal_bytes,
            replay_streams=self.active_streams,
            disk_guard=self._disk_guard(),
        )
