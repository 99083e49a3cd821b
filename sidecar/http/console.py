"""The web console (README "Web console"): a page at ``/`` and the JSON it reads.

Read-only. Every answer comes from the console's own reader connection (``StoreReads.read``:
one read at a time, whatever the number of browsers), never from the writer, and is bounded
like the MQTT API: events through the ``query``/``get``/``search`` code
(``api.handlers.query_page``, ``get_event``, ``search_page``: ``api.max_limit``,
``api.max_response_bytes``), dead letters through
``ingest.letters``, the health figures through what ``/healthz`` reads. The chart counts the
``(created_at, type)`` index over a fixed set of ranges, one answer per range per
``CHART_TTL`` seconds.

Query parameters are checked here and refused with a ``400`` naming the parameter, in our
words. The assets (``static/``) are plain HTML, CSS and JS shipped in the package: no build
step, nothing from another origin; the JS writes every value from an event as text.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any, NamedTuple

import msgspec

from sidecar import __version__
from sidecar.api import protocol
from sidecar.api.handlers import get_event, query_page, search_page
from sidecar.config import ApiConfig
from sidecar.core.filters import MAX_INT64
from sidecar.core.units import parse_duration
from sidecar.errors import FilterError, RequestError, StorageError
from sidecar.http.server import Request, Response, Route
from sidecar.ingest import letters
from sidecar.logs import RateLimited, get_logger
from sidecar.observe import health
from sidecar.observe.sources import Sources, StoreReads
from sidecar.storage.reads import Reader

log = get_logger("sidecar.http.console")

PAGE_LIMIT = 50  # events or dead letters per page unless ``limit`` says
MAX_PAGE_LIMIT = 500  # and never more (nor more than api.max_limit)
CHART_TTL = 10.0  # seconds one chart answer is reused
MAX_SERIES = 8  # types drawn one by one; the rest summed as one "other" series
# range -> (milliseconds, bucket milliseconds): 60 to 168 bars
CHART_RANGES: dict[str, tuple[int, int]] = {
    "1h": (3_600_000, 60_000),
    "6h": (6 * 3_600_000, 5 * 60_000),
    "24h": (24 * 3_600_000, 15 * 60_000),
    "7d": (7 * 86_400_000, 3_600_000),
    "30d": (30 * 86_400_000, 6 * 3_600_000),
}
FILTER_PARAMS = ("type", "source", "topic", "since", "until", "correlation_id", "causation_id",
                 "trace_id")
_LIST_PARAMS = ("type", "source")  # comma-separated: several types (globs) or sources
MAX_QUERY_CHARS = 1000  # the longest search text (``protocol.SearchRequest.query``)
# Around the matched words of a search snippet: private-use characters the page splits on to
# build its highlight elements (event text is never markup; an event holding these characters
# shows a stray highlight, still as text).
MARKS = ("\ue000", "\ue001")
_UNAVAILABLE = {"search_disabled", "search_unavailable"}  # a 409: the store cannot search

ASSETS = {  # path -> (file in static/, content type)
    "/": ("console.html", "text/html; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
}
PUBLIC = frozenset({"/static/console.css"})  # the login form's look: no secret in it


def _asset(name: str) -> bytes:
    return resources.files("sidecar.http").joinpath("static", name).read_bytes()


def login_page() -> bytes:
    """The login form (``POST /login``), shown at ``/`` to a browser without the cookie."""
    return _asset("login.html")


# ------------------------------------------------------------------------------ answers
class TailPage(msgspec.Struct, frozen=True):
    """``/api/tail``: the events after the cursor in ``seq`` order; ``cursor`` is the
    ``after`` of the next poll; ``more`` says the page was full (poll again at once)."""

    events: list[protocol.EventOut]
    cursor: int
    more: bool


class Series(msgspec.Struct, frozen=True):
    type: str  # the event type, or "" for the sum of the other types
    total: int
    counts: list[int]  # one per bucket, oldest first


class Chart(msgspec.Struct, frozen=True, kw_only=True):
    """``/api/chart``: events per bucket by type over ``[since, until)`` (epoch ms)."""

    range: str
    since: int
    until: int
    bucket_ms: int
    series: list[Series]  # the busiest types first; an "other" series (type "") last


class Features(msgspec.Struct, frozen=True, kw_only=True):
    """``/api/features``: what the page offers. ``search``: the search box (full-text search
    answers on this store); ``search_note`` why not; ``logout``: a token guards the console."""

    search: bool
    search_note: str | None
    logout: bool


class LetterPage(msgspec.Struct, frozen=True):
    letters: list[letters.LetterSummary]
    next: int | None  # the ``before`` of the next (older) page, or null


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """``/api/health``: ``/healthz``'s verdict and the figures ``/metrics`` exposes."""

    version: str
    health: health.Health
    uptime_s: float
    events_total: int
    dead_letters_total: int
    oldest_event_at: int | None
    newest_event_at: int | None
    events_stored: int  # since start
    received: int
    duplicates: int
    dead_letters: int
    database_bytes: int
    wal_bytes: int
    last_commit_lag_ms: int | None


# ------------------------------------------------------------------------------ parameters
def _bad(name: str, message: str) -> RequestError:
    return RequestError("bad_request", f"{name}: {message}", field=name)


def _check_names(request: Request, allowed: tuple[str, ...]) -> None:
    for name, values in request.query.items():
        if name not in allowed:
            raise _bad(name[:64], "unknown parameter; one of " + ", ".join(allowed))
        if len(values) > 1:
            raise _bad(name, "given more than once")


def _one(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _int(request: Request, name: str, *, low: int, high: int, default: int | None) -> int | None:
    text = _one(request, name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", text.strip()):
        raise _bad(name, f"expected a whole number from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise _bad(name, f"must be from {low} to {high}")
    return value


def _time(text: str, name: str, now_ms: int) -> int | str:
    """Epoch ms, an RFC 3339 time (checked by storage), or a duration ago (``90m``, ``2d``)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if ":" in text:
        return text
    try:
        return now_ms - int(parse_duration(text) * 1000)
    except (TypeError, ValueError):
        raise _bad(name, "expected epoch ms, an RFC 3339 time or a duration ago such as 1h "
                   "or 2d") from None


def _filters(request: Request) -> dict[str, Any]:
    """The ``query`` filters given (an empty value: not given), checked by the same wire
    limits as the MQTT API's (``protocol.Filter``)."""
    now_ms = int(time.time() * 1000)
    given: dict[str, Any] = {}
    for name in FILTER_PARAMS:
        text = _one(request, name)
        if text is None or not text.strip():
            continue
        if name in _LIST_PARAMS and "," in text:
            given[name] = [part.strip() for part in text.split(",") if part.strip()] or None
        elif name in ("since", "until"):
            given[name] = _time(text, name, now_ms)
        else:
            given[name] = text.strip()
    try:
        msgspec.convert(given, protocol.Filter)
    except msgspec.ValidationError as exc:
        raise protocol.validation_error(str(exc)) from None
    return given


# ------------------------------------------------------------------------------ routes
class _Limits(NamedTuple):
    page: int  # the largest ``limit``
    max_bytes: int


class Console:
    """The console's routes over one ``StoreReads`` (its own reader connection)."""

    def __init__(self, api: ApiConfig, reads: StoreReads, sources: Sources, *,
                 rank_window: int = 2000, logout: bool = False) -> None:
        self._reads = reads
        self._sources = sources
        self._rank_window = rank_window  # [search] rank_window (pages here are by time)
        self._logout = logout
        self._max_limit = api.max_limit
        self._limits = _Limits(min(MAX_PAGE_LIMIT, api.max_limit), api.max_response_bytes)
        self._charts: dict[str, tuple[float, Chart]] = {}
        self._chart_lock = threading.Lock()
        self._refusals = RateLimited(period=10.0, burst=10)
        self._assets = {path: Response(200, kind, _asset(name)) for path, (name, kind)
                        in ASSETS.items()}

    def routes(self) -> dict[str, Route]:
        pages: dict[str, Route] = {path: self._static(answer)
                                   for path, answer in self._assets.items()}
        api: dict[str, Callable[[Request], Any]] = {
            "/api/events": self.events, "/api/event": self.event, "/api/tail": self.tail,
            "/api/search": self.search, "/api/features": self.features,
            "/api/chart": self.chart, "/api/dead-letters": self.dead_letters,
            "/api/dead-letter": self.dead_letter, "/api/health": self.figures,
        }
        return pages | {path: self._json(path, fn) for path, fn in api.items()}

    @staticmethod
    def _static(answer: Response) -> Route:
        def route(request: Request) -> Response:
            return answer
        return route

    def _json(self, path: str, fn: Callable[[Request], Any]) -> Route:
        def route(request: Request) -> Response:
            try:
                return Response(200, "application/json", protocol.encode(fn(request), "json"))
            except FilterError as exc:
                return self._refused(path, protocol.bad_filter(exc))
            except RequestError as exc:
                return self._refused(path, exc)
            except StorageError as exc:
                log.error("console_read_failed", path=path, error=str(exc))
                return _problem(HTTPStatus.SERVICE_UNAVAILABLE, "the store could not be read; "
                                "see the daemon's log", None)
        return route

    def _refused(self, path: str, exc: RequestError) -> Response:
        allowed, suppressed = self._refusals.allow()
        if allowed:
            log.info("console_request_refused", path=path, code=exc.code, field=exc.field,
                     suppressed=suppressed)
        status = (HTTPStatus.NOT_FOUND if exc.code == "not_found" else HTTPStatus.CONFLICT
                  if exc.code in _UNAVAILABLE else HTTPStatus.BAD_REQUEST)
        return _problem(status, exc.message, exc.field)

    def _limit(self, request: Request) -> int:
        limit = _int(request, "limit", low=1, high=self._limits.page, default=PAGE_LIMIT)
        assert limit is not None
        return min(limit, self._limits.page)

    # ---------------------------------------------------------------- events
    def events(self, request: Request) -> protocol.QueryPage:
        """Matching events newest first; ``before`` (a seq: the ``next`` of the page before)
        pages back."""
        _check_names(request, (*FILTER_PARAMS, "before", "limit"))
        filters = _filters(request)
        before = _int(request, "before", low=1, high=MAX_INT64, default=None)
        query = protocol.QueryRequest(**filters, after=before, order="desc",
                                      limit=self._limit(request))
        return self._reads.read(lambda r: query_page(r, query, fmt="json",
                                                     max_limit=self._max_limit,
                                                     max_bytes=self._limits.max_bytes))

    def search(self, request: Request) -> protocol.SearchPage:
        """Events matching the search text ``q`` (the ``search`` op's language) and the
        filters, newest first; ``before`` (the ``next`` of the page before) pages back. Each
        hit's snippet has ``MARKS`` around the matched words."""
        _check_names(request, ("q", *FILTER_PARAMS, "before", "limit"))
        text = (_one(request, "q") or "").strip()
        if not text:
            raise _bad("q", "required: the words to search for")
        if len(text) > MAX_QUERY_CHARS:
            raise _bad("q", f"at most {MAX_QUERY_CHARS} characters")
        filters = _filters(request)
        before = _int(request, "before", low=1, high=MAX_INT64, default=None)
        query = protocol.SearchRequest(**filters, query=text, after=before, order="desc",
                                       limit=self._limit(request), highlight=list(MARKS))
        try:
            return self._reads.read(lambda r: search_page(
                r, query, fmt="json", max_limit=self._max_limit,
                max_bytes=self._limits.max_bytes, rank_window=self._rank_window))
        except FilterError as exc:  # the op's names -> this endpoint's
            if exc.field == "query":
                raise _bad("q", exc.message.removeprefix("query: ")) from None
            if exc.field == "after":
                raise _bad("before", "expected the next of the page before") from None
            raise

    def features(self, request: Request) -> Features:
        _check_names(request, ())
        refusal = self._reads.read(lambda r: r.search_unavailable())
        return Features(search=refusal is None, search_note=None if refusal is None
                        else str(refusal), logout=self._logout)

    def event(self, request: Request) -> protocol.EventOut:
        _check_names(request, ("id",))
        event_id = (_one(request, "id") or "").strip()
        if not event_id:
            raise _bad("id", "required")
        if len(event_id) > 256:
            raise _bad("id", "at most 256 characters")
        return self._reads.read(lambda r: get_event(r, event_id, fmt="json"))

    def tail(self, request: Request) -> TailPage:
        """The events after ``after`` (oldest first); without ``after``, no events and the
        cursor of the newest event: the browser then polls from there."""
        _check_names(request, (*FILTER_PARAMS, "after", "limit"))
        filters = _filters(request)
        after = _int(request, "after", low=0, high=MAX_INT64, default=None)
        limit = self._limit(request)
        if after is None:
            return TailPage([], self._reads.read(lambda r: r.last_seq()), False)
        query = protocol.QueryRequest(**filters, after=after, order="asc", limit=limit)
        page = self._reads.read(lambda r: query_page(r, query, fmt="json",
                                                     max_limit=self._max_limit,
                                                     max_bytes=self._limits.max_bytes))
        cursor = page.events[-1].seq if page.events else after
        return TailPage(page.events, cursor, page.next is not None)

    # ---------------------------------------------------------------- chart
    def chart(self, request: Request) -> Chart:
        _check_names(request, ("range",))
        name = _one(request, "range") or "24h"
        if name not in CHART_RANGES:
            raise _bad("range", "one of " + ", ".join(CHART_RANGES))
        with self._chart_lock:
            cached = self._charts.get(name)
            if cached is not None and time.monotonic() - cached[0] < CHART_TTL:
                return cached[1]
        span, bucket_ms = CHART_RANGES[name]
        until = -(-int(time.time() * 1000) // bucket_ms) * bucket_ms  # the current bucket's end
        since = until - span
        rows = self._reads.read(lambda r: r.counts_by_bucket(since=since, until=until,
                                                             bucket_ms=bucket_ms))
        answer = Chart(range=name, since=since, until=until, bucket_ms=bucket_ms,
                       series=_series(rows, span // bucket_ms))
        with self._chart_lock:
            self._charts[name] = (time.monotonic(), answer)
        return answer

    # ---------------------------------------------------------------- dead letters
    def dead_letters(self, request: Request) -> LetterPage:
        """Dead letters newest first, with their reasons; ``topic`` (an MQTT filter) and
        ``reason`` (a substring) narrow them, ``before`` (an id) pages back."""
        _check_names(request, ("topic", "reason", "before", "limit"))
        topic = (_one(request, "topic") or "").strip() or None
        reason = (_one(request, "reason") or "").strip() or None
        for name, value in (("topic", topic), ("reason", reason)):
            if value is not None and len(value) > 1024:
                raise _bad(name, "at most 1024 characters")
        before = _int(request, "before", low=1, high=MAX_INT64, default=None)
        flt = letters.LetterFilter(topic=topic, reason=reason)
        limit = self._limit(request)
        found, after = self._reads.read(lambda r: letters.page(r.db, flt, limit=limit,
                                                               after=before))
        return LetterPage(found, after)

    def dead_letter(self, request: Request) -> letters.Letter:
        _check_names(request, ("id",))
        letter_id = _int(request, "id", low=1, high=MAX_INT64, default=None)
        if letter_id is None:
            raise _bad("id", "required")
        return self._reads.read(lambda r: letters.get(r.db, letter_id))

    # ---------------------------------------------------------------- health
    def figures(self, request: Request) -> Figures:
        _check_names(request, ())
        src = self._sources
        state = health.check(src)
        store = self._reads.read(Reader.figures)
        s = src.stats
        return Figures(version=__version__, health=state,
                       uptime_s=round(time.time() - s.started_at, 3),
                       events_total=store.events_total,
                       dead_letters_total=store.dead_letters_total,
                       oldest_event_at=store.oldest_event_at,
                       newest_event_at=store.newest_event_at, events_stored=s.events_stored,
                       received=s.received, duplicates=s.duplicates, dead_letters=s.dead_letters,
                       database_bytes=store.database_bytes, wal_bytes=store.wal_bytes,
                       last_commit_lag_ms=s.last_commit_lag_ms)


def _series(rows: list[tuple[int, str, int]], buckets: int) -> list[Series]:
    """Rows of ``(bucket, type, count)`` -> one series per busy type, the rest as one."""
    by_type: dict[str, list[int]] = {}
    for bucket, kind, count in rows:
        if 0 <= bucket < buckets:
            by_type.setdefault(kind, [0] * buckets)[bucket] += count
    ranked = sorted(by_type.items(), key=lambda item: (-sum(item[1]), item[0]))
    series = [Series(kind, sum(counts), counts) for kind, counts in ranked[:MAX_SERIES]]
    rest = ranked[MAX_SERIES:]
    if rest:
        counts = [sum(c[i] for _, c in rest) for i in range(buckets)]
        series.append(Series("", sum(counts), counts))
    return series


def _problem(status: HTTPStatus, message: str, field: str | None) -> Response:
    body: dict[str, Any] = {"error": status.phrase.lower(), "message": message}
    if field is not None:
        body["field"] = field
    return Response(status.value, "application/json", msgspec.json.encode(body) + b"\n")
