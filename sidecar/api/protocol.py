"""Wire types of the request/response API (msgspec): requests, answers, events in answers.

Requests are ``Struct``s with ``forbid_unknown_fields``; decoders are built once at import. A
request that does not decode becomes a ``RequestError("bad_request", field=...)`` naming the
field, never a silent default; a filter storage refuses (``errors.FilterError``) becomes the
same (``bad_filter``). Answers are ``Struct``s too, encoded with the keys (and key order) the
README documents; ``Ok``/``Error`` wrap them with ``status`` and the echoed ``transaction``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

from sidecar.core import codecs as wire
from sidecar.core.decode_errors import decode_failure, explain_validation
from sidecar.core.events import StoredEvent
from sidecar.core.filters import MAX_INT64
from sidecar.core.inbound import InboundMessage
from sidecar.core.kv import MAX_KEY_BYTES, KvEntry
from sidecar.errors import FilterError, RequestError

OPS = ("query", "search", "get", "latest", "replay", "replay/cancel", "replay/renew", "stats",
       "kv/get", "kv/put", "kv/delete", "kv/list", "kv/watch")

Text = Annotated[str, Meta(min_length=1, max_length=1024)]
StreamId = Annotated[str, Meta(min_length=1, max_length=64)]
Owner = Annotated[str, Meta(min_length=1, max_length=128)]
Lease = Annotated[float, Meta(ge=1, le=3600)]  # seconds a stream lives without a renewal
Scalar = str | int | float | bool | None


class RequestMessage(NamedTuple):
    """One request as the API sees it (``request_from_inbound`` makes it from the broker's
    ``InboundMessage``)."""

    op: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    retain: bool = False


def request_from_inbound(msg: InboundMessage, *, prefix: str) -> RequestMessage:
    """A message the broker received on ``<prefix><op>`` (``prefix`` is
    ``<base_topic>/request/``) -> the request for ``op``."""
    return RequestMessage(op=msg.topic[len(prefix):], payload=bytes(msg.payload),
                          response_topic=msg.response_topic,
                          correlation_data=msg.correlation_data,
                          content_type=msg.content_type, retain=msg.retain)


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Fields every request may carry: where to answer (MQTT 3.1.1) and what to echo."""

    transaction: Any = None
    reply_to: str | None = None


class Filter(_Request, frozen=True):
    """The filters shared by ``query`` and ``replay``, with their wire limits (it has the
    fields of ``core.filters.Filter``, what storage reads)."""

    type: Text | Annotated[list[Text], Meta(min_length=1, max_length=100)] | None = None
    source: Text | Annotated[list[Text], Meta(min_length=1, max_length=100)] | None = None
    topic: Annotated[str, Meta(min_length=1, max_length=65535)] | None = None
    since: int | str | None = None
    until: int | str | None = None
    correlation_id: Text | None = None
    causation_id: Text | None = None
    trace_id: Text | None = None
    after: Annotated[int, Meta(ge=0, le=MAX_INT64)] | None = None
    where: Annotated[dict[str, Scalar], Meta(min_length=1, max_length=16)] | None = None


class QueryRequest(Filter, frozen=True):
    limit: Annotated[int, Meta(ge=1)] = 100
    order: Literal["asc", "desc"] = "asc"


Mark = Annotated[str, Meta(max_length=32)]
SearchCursor = Annotated[str, Meta(min_length=1, max_length=64)] | Annotated[int, Meta(ge=0, le=MAX_INT64)]


class SearchRequest(Filter, frozen=True, kw_only=True):
    """Full-text ``query`` (``core.search_query``) with the filters of ``query``; ``order``
    ``rank`` (bm25, best first), ``desc`` (newest first) or ``asc``; ``after`` the ``next`` of
    the previous page (a ``rank:seq`` text when ranked, a seq by time); ``highlight`` the two
    marks put around matched words in the snippets."""

    query: Annotated[str, Meta(min_length=1, max_length=1000)]
    # the cursor of a ranked page is text: wider than the seq of ``Filter.after``
    after: SearchCursor | None = None  # type: ignore[assignment]
    limit: Annotated[int, Meta(ge=1)] = 20
    order: Literal["rank", "desc", "asc"] = "rank"
    highlight: Annotated[list[Mark], Meta(min_length=2, max_length=2)] | None = None


class LatestRequest(_Request, frozen=True):
    """The newest event per distinct value of ``key`` (a JSON path) among the events of
    ``type``/``source``/``where``; paged by key value (``after``: the last key of a page)."""

    key: Annotated[str, Meta(min_length=1, max_length=1024)]
    type: Text | Annotated[list[Text], Meta(min_length=1, max_length=100)] | None = None
    source: Text | Annotated[list[Text], Meta(min_length=1, max_length=100)] | None = None
    where: Annotated[dict[str, Scalar], Meta(min_length=1, max_length=16)] | None = None
    limit: Annotated[int, Meta(ge=1)] = 100
    after: Annotated[str, Meta(max_length=65535)] | int | float | None = None


class GetRequest(_Request, frozen=True):
    id: Annotated[str, Meta(min_length=1, max_length=256)]


class ReplayRequest(Filter, frozen=True):
    batch: Annotated[int, Meta(ge=1)] = 100
    rate: Annotated[float, Meta(gt=0)] | None = None
    pace: Literal["instant", "original"] = "instant"
    speed: Annotated[float, Meta(gt=0, le=1_000_000)] = 1.0
    live: bool = False
    max_duration: Annotated[float, Meta(gt=0)] | None = None
    owner: Owner | None = None  # a token the requester's Will names in a cancel by owner
    lease: Lease | None = None  # the stream ends unless renewed within this many seconds


class CancelRequest(_Request, frozen=True):
    """One stream by id, or every stream of an ``owner`` (a requester's Will)."""

    stream: StreamId | None = None
    owner: Owner | None = None


class RenewRequest(_Request, frozen=True):
    """Extend a leased stream's lease by its ``lease`` seconds from now."""

    stream: StreamId


class StatsRequest(_Request, frozen=True):
    pass


KvKey = Annotated[str, Meta(max_length=MAX_KEY_BYTES)]  # bytes and characters: core.kv.check_key
Version = Annotated[int, Meta(ge=0, le=MAX_INT64)]


class KvGetRequest(_Request, frozen=True):
    key: KvKey


class KvPutRequest(_Request, frozen=True):
    """``value``: any JSON; ``if_version``: put only if the key is at this version (0: absent)."""

    key: KvKey
    value: Any
    if_version: Version | None = None


class KvDeleteRequest(_Request, frozen=True):
    key: KvKey
    if_version: Version | None = None


class KvListRequest(_Request, frozen=True):
    prefix: KvKey = ""
    limit: Annotated[int, Meta(ge=1)] = 100
    after: KvKey | None = None  # the ``next`` of the previous page


class KvWatchRequest(_Request, frozen=True):
    """Current values of the keys under ``prefix``, ``caught_up``, then every change."""

    prefix: KvKey = ""
    batch: Annotated[int, Meta(ge=1)] = 100
    max_duration: Annotated[float, Meta(gt=0)] | None = None
    owner: Owner | None = None
    lease: Lease | None = None


class _Envelope(msgspec.Struct):
    """Read loosely first, so even a bad request is answered where it asked and echoed."""

    transaction: Any = None
    reply_to: Any = None


REQUEST_TYPES: dict[str, type[_Request]] = {
    "query": QueryRequest, "search": SearchRequest, "get": GetRequest,
    "latest": LatestRequest, "replay": ReplayRequest,
    "replay/cancel": CancelRequest, "replay/renew": RenewRequest, "stats": StatsRequest,
    "kv/get": KvGetRequest, "kv/put": KvPutRequest, "kv/delete": KvDeleteRequest,
    "kv/list": KvListRequest, "kv/watch": KvWatchRequest,
}
_DECODERS: dict[tuple[str, str], Any] = {}
for _op, _type in REQUEST_TYPES.items():
    _DECODERS[(_op, "json")] = msgspec.json.Decoder(_type)
    _DECODERS[(_op, "msgpack")] = msgspec.msgpack.Decoder(_type)
_ENVELOPE: dict[str, Any] = {"json": msgspec.json.Decoder(_Envelope),
                             "msgpack": msgspec.msgpack.Decoder(_Envelope)}



def body_format(msg: RequestMessage) -> str:
    """``"msgpack"`` when the request was MessagePack (content type or first byte), else JSON."""
    return "msgpack" if wire.format_of(msg.content_type, msg.payload) == "msgpack" else "json"


def envelope(msg: RequestMessage) -> tuple[Any, Any]:
    """``(transaction, reply_to)`` of a request, whatever else is wrong with it."""
    if not msg.payload.strip():
        return None, None
    try:
        env = _ENVELOPE[body_format(msg)].decode(msg.payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None, None
    return env.transaction, env.reply_to


def decode_request(msg: RequestMessage) -> _Request:
    """Decode the body for ``msg.op`` or raise ``RequestError`` naming the bad field."""
    fmt = body_format(msg)
    payload = msg.payload if msg.payload.strip() else (b"\x80" if fmt == "msgpack" else b"{}")
    try:
        request: _Request = _DECODERS[(msg.op, fmt)].decode(payload)
        return request
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError:
        raise RequestError("bad_request", decode_failure(payload, fmt)) from None
    except RecursionError:
        raise RequestError("bad_request", "request nested too deeply") from None
    except UnicodeDecodeError:  # msgspec raises it for invalid UTF-8 inside a string
        raise RequestError("bad_request", "invalid UTF-8 in a string") from None


def validation_error(message: str) -> RequestError:
    """msgspec's ``Expected `int`, got `str` - at `$.limit``` -> bad_request on ``limit``."""
    kind, field, text = explain_validation(message)
    if kind == "unknown":
        return RequestError("bad_request", f"{field}: unknown field", field=field)
    if kind == "missing":
        return RequestError("bad_request", f"{field}: required", field=field)
    if not field:
        return RequestError("bad_request", text)
    return RequestError("bad_request", f"{field}: {text}", field=field)


def bad_filter(exc: FilterError) -> RequestError:
    """A filter storage refused -> the ``bad_request`` answer naming its field."""
    return RequestError("bad_request", exc.message, field=exc.field)


# ------------------------------------------------------------------------------ answers
class EventOut(msgspec.Struct, frozen=True):
    """An event in an answer. ``payload``/``metadata`` are the stored JSON embedded as it is
    (``msgspec.Raw``, JSON answers) or decoded (MessagePack answers)."""

    seq: int
    id: str
    topic: str
    type: str
    source: str
    payload: Any
    metadata: Any
    created_at: int
    received_at: int


class QueryPage(msgspec.Struct, frozen=True, omit_defaults=True):
    """The ``data`` of a ``query`` answer: ``next`` is the cursor of the next page or null;
    ``unindexed_where`` (only when some) the ``where`` keys no path index served (a scan)."""

    events: list[EventOut]
    next: int | None
    unindexed_where: list[str] | None = None


class SearchHit(msgspec.Struct, frozen=True):
    """One match: the event, its snippet (matched words between the highlight marks) and its
    bm25 rank (lower is better; FTS5's sign)."""

    event: EventOut
    snippet: str
    rank: float


class SearchPage(msgspec.Struct, frozen=True):
    """The ``data`` of a ``search`` answer. ``complete`` false while existing events are still
    being indexed: then only those with ``seq <= indexed_through`` and every event from
    ``live_from`` on are searched. ``rank_window`` (a ranked search that matched more events
    than ``[search] rank_window``): only the newest that many matches were ranked."""

    hits: list[SearchHit]
    next: str | int | None
    complete: bool
    indexed_through: int
    live_from: int
    rank_window: int | None = None  # ranked among the newest this many matches only


class LatestAnswer(msgspec.Struct, frozen=True):
    """The ``data`` of a ``latest`` answer: the newest event per key in key order; ``next``
    the last key when more may follow, else null; ``indexed`` whether a path index served it."""

    key: str
    events: list[EventOut]
    next: str | int | float | None
    indexed: bool


class KvValue(msgspec.Struct, frozen=True):
    """A key's entry in ``kv/get``, ``kv/list`` and ``kv/watch`` answers (``value`` embedded as
    stored in JSON answers, decoded in MessagePack ones)."""

    key: str
    value: Any
    version: int
    updated_at: int


class KvVersion(msgspec.Struct, frozen=True, omit_defaults=True):
    """``kv/put``: the version now stored; ``kv/delete``: the version deleted."""

    key: str
    version: int
    deleted: bool = False


class KvList(msgspec.Struct, frozen=True):
    """``kv/list``: ``next`` is the ``after`` of the next page, or null."""

    entries: list[KvValue]
    next: str | None


def kv_value(entry: KvEntry, fmt: str) -> KvValue:
    text = entry.value if entry.value is not None else "null"
    value = msgspec.Raw(text.encode()) if fmt == "json" else _json_value(text)
    return KvValue(entry.key, value, entry.version, entry.updated_at)


class Cancelled(msgspec.Struct, frozen=True):
    """``replay/cancel`` of one stream."""

    stream: str
    cancelled: bool = True


class OwnerCancelled(msgspec.Struct, frozen=True, kw_only=True):
    """``replay/cancel`` by owner: the streams it ended (maybe none)."""

    owner: str
    cancelled: bool = True
    streams: list[str]


class Renewed(msgspec.Struct, frozen=True):
    """``replay/renew``: the lease (seconds) now runs again from the renewal."""

    stream: str
    lease: float | None


class StatsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The ``data`` of a ``stats`` answer (the keys the README lists, in this order)."""

    version: str
    uptime_s: float
    events_total: int
    events_stored: int
    duplicates: int
    dead_letters_total: int
    dead_letters: int
    qos0_dropped: int
    received: int
    write_errors: int
    queue_depth: int
    last_commit_lag_ms: int | None
    last_commit_at: int | None
    oldest_event_at: int | None
    newest_event_at: int | None
    database_bytes: int
    wal_bytes: int
    replay_streams: int
    disk_guard: dict[str, Any] | None


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class Ok(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="status", tag="ok"):
    """A successful answer: ``{"status": "ok", "data": ..., "transaction": ...}``."""

    data: Any
    transaction: Any = None


class Error(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="status", tag="error"):
    """An error answer: ``{"status": "error", "error": {code, message, field?}, ...}``."""

    error: ErrorDetail
    transaction: Any = None


def event_out(event: StoredEvent, fmt: str) -> EventOut:
    """A stored event as it appears in an answer; JSON columns embedded without re-encoding
    (JSON answers) or decoded (MessagePack answers)."""
    if fmt == "json":
        return EventOut(event.seq, event.id, event.topic, event.type, event.source,
                        msgspec.Raw(event.payload.encode()), msgspec.Raw(event.metadata.encode()),
                        event.created_at, event.received_at)
    return EventOut(event.seq, event.id, event.topic, event.type, event.source,
                    _json_value(event.payload), _json_value(event.metadata), event.created_at,
                    event.received_at)


def _json_value(text: str) -> Any:
    """A stored JSON column decoded for a MessagePack answer. The store keeps a payload's numbers
    as they came, and JSON allows numbers no double or 64-bit integer holds (``1e999``, 400
    digits): msgspec refuses those, so the slow path reads them as floats (``1e999`` is inf)."""
    try:
        return wire.JSON_ANY.decode(text)
    except msgspec.ValidationError:
        return json.loads(text, parse_int=_int_or_float)


def _int_or_float(digits: str) -> int | float:
    value = float(digits) if len(digits) > 20 else int(digits)
    return value if -2**63 <= value < 2**64 else float(value)


def _fit_msgpack(value: Any) -> Any:
    """``value`` with the integers MessagePack cannot carry (beyond 64 bits) as floats."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -2**63 <= value < 2**64:
            return value
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, dict):
        return {k: _fit_msgpack(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fit_msgpack(v) for v in value]
    return value


def ok(data: Any, transaction: Any) -> Ok:
    return Ok(data, transaction)


def error(exc: RequestError, transaction: Any) -> Error:
    return Error(ErrorDetail(exc.code, exc.message, exc.field), transaction)


def encode(answer: Any, fmt: str) -> bytes:
    if fmt != "msgpack":
        return wire.JSON_ENCODER.encode(answer)
    try:
        return wire.MSGPACK_ENCODER.encode(answer)
    except OverflowError:  # an integer beyond 64 bits (a stored payload, a transaction)
        return wire.MSGPACK_ENCODER.encode(_fit_msgpack(msgspec.to_builtins(answer)))


CONTENT_TYPES = {"json": "application/json", "msgpack": "application/msgpack"}
