"""The history commands: ``kairo-sidecar query|get|latest|replay``, printing JSON lines (or,
with ``--format table``, what ``render`` lays out for a terminal).

They talk to a running sidecar through the broker (``sidecar.client``), so they work from
another machine; with ``--db PATH`` they read a local database file directly (no sidecar
needed; read-only). ``cli`` only wires them in.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from sidecar.api import protocol as requests
from sidecar.cli import args as cliargs
from sidecar.cli import render
from sidecar.cli.progress import Progress
from sidecar.config import Config
from sidecar.core.events import StoredEvent
from sidecar.errors import BrokerError, FilterError, RequestError, UsageError
from sidecar.storage.queries import Conditions, conditions
from sidecar.storage.reads import Reader, open_reader

_FILTERS_HELP = """filters: --type (exact or glob like kairo.user.*, repeatable), --source (repeatable),
--topic (MQTT filter with + and #), --since/--until (an age such as 30d, 12h or 90m, an RFC 3339
time, or epoch ms), --correlation-id,
--causation-id, --trace-id, --after SEQ, --where payload.PATH=VALUE (repeatable; VALUE is JSON
if it parses, else a string: --where payload.n=5 --where 'payload.code="5"')"""


# ------------------------------------------------------------------------------ parsers
def add_parsers(sub: Any) -> None:
    """Add ``query``, ``get`` and ``replay`` to the ``kairo-sidecar`` sub-command parsers."""
    query = sub.add_parser(
        "query", help="query stored events (JSON lines)", epilog=_FILTERS_HELP,
        description="Print matching events as JSON lines, oldest first. Example: kairo-sidecar "
                    "query --correlation-id workflow-123 --all")
    _filters(query)
    query.add_argument("--limit", type=int, help="events per page (default 100)")
    query.add_argument("--order", type=cliargs.choice(("asc", "desc")), metavar="{asc,desc}",
                       help="sequence order (default asc)")
    query.add_argument("--all", action="store_true", help="walk every page (default: one page; "
                       "the next cursor is printed on stderr)")
    _format(query)
    _connection(query)

    latest = sub.add_parser(
        "latest", help="the newest event per distinct value of a JSON path (JSON lines)",
        description="Print the newest event for each value of KEY among the matching events, "
                    "in key order. Example: kairo-sidecar latest payload.name "
                    "--type 'kairo.plugin.*' --all")
    latest.add_argument("key", help="a JSON path: payload.<path> or metadata.<path>")
    latest.add_argument("--type", action="append", metavar="TYPE")
    latest.add_argument("--source", action="append", metavar="SOURCE")
    latest.add_argument("--where", action="append", metavar="PATH=VALUE")
    latest.add_argument("--after", metavar="KEY", help="start after this key value (JSON if "
                        "it parses, else a string)")
    latest.add_argument("--limit", type=int, help="keys per page (default 100)")
    latest.add_argument("--all", action="store_true", help="walk every page")
    _format(latest, table="the key's value, then the event's columns")
    _connection(latest)

    get = sub.add_parser("get", help="print one event by id",
                         description="Print the event with this id as JSON. Example: "
                                     "kairo-sidecar get 5b0c6c1e-8f0a-4a8e-9a57-3f7e1c2d9b10")
    get.add_argument("id", help="the event id")
    _format(get, table="one field per line, payload.* flattened")
    _connection(get)

    replay = sub.add_parser(
        "replay", help="replay stored (and with --live, new) events as JSON lines",
        epilog=_FILTERS_HELP,
        description="Stream matching events in sequence order as JSON lines. Example: "
                    "kairo-sidecar replay --correlation-id workflow-123 --live")
    _filters(replay)
    replay.add_argument("--batch", type=int, help="events per message (default 100)")
    replay.add_argument("--rate", type=float, help="at most this many events per second")
    replay.add_argument("--pace", type=cliargs.choice(("instant", "original")),
                        metavar="{instant,original}",
                        help="original: keep the recorded gaps between events")
    replay.add_argument("--speed", type=float, help="with --pace original: speed-up factor")
    replay.add_argument("--live", action="store_true",
                        help="after the stored events, keep forwarding new ones (Ctrl-C stops)")
    replay.add_argument("--max-duration", type=float, metavar="SECONDS",
                        help="end the stream after this long")
    _format(replay)
    _connection(replay)


def _filters(parser: argparse.ArgumentParser, *, cursor: Callable[[str], Any] = int,
             cursor_name: str = "SEQ") -> None:
    parser.add_argument("--type", action="append", metavar="TYPE")
    parser.add_argument("--source", action="append", metavar="SOURCE")
    parser.add_argument("--topic", metavar="FILTER")
    parser.add_argument("--since", metavar="TIME")
    parser.add_argument("--until", metavar="TIME")
    parser.add_argument("--correlation-id")
    parser.add_argument("--causation-id")
    parser.add_argument("--trace-id")
    parser.add_argument("--after", type=cursor, metavar=cursor_name)
    parser.add_argument("--where", action="append", metavar="PATH=VALUE")


def _format(parser: argparse.ArgumentParser, *,
            table: str = "readable columns cut to the terminal width") -> None:
    parser.add_argument("--format", type=cliargs.choice(render.FORMATS), default="json",
                        metavar="{json,table}",
                        help=f"json lines (default) or table: {table}")


def _connection(parser: argparse.ArgumentParser, *, db_help: str | None = None) -> None:
    parser.add_argument("--host", help="broker host (default: [mqtt] host)")
    parser.add_argument("--port", type=int, help="broker port (default: [mqtt] port)")
    parser.add_argument("--protocol", type=cliargs.choice(("5", "3.1.1")), metavar="{5,3.1.1}",
                        help="default: [mqtt] protocol")
    parser.add_argument("--base-topic", help="default: [api] base_topic")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for an answer (default 10)")
    cliargs.add_database_options(parser, db_help=db_help or "read this database file (or "
                                 "postgresql:// URL) directly instead of asking a running "
                                 "sidecar")


# ------------------------------------------------------------------------------ commands
def cmd_query(args: argparse.Namespace, config: Config) -> int:
    body = {**_filter_body(args), "limit": args.limit, "order": args.order}
    body = {k: v for k, v in body.items() if v is not None}
    show = _events_out(args.format)
    if args.db:
        reader = _local(args, config)
        request = _convert(body, requests.QueryRequest)
        cond = _conditions(request, reader.path_indexes() if request.where else set())
        _unindexed_hint(list(cond.unindexed))
        cond = reader.time_plan(cond)  # a small time range: through its index, as the API
        after = request.after
        while True:
            rows = reader.page(cond, limit=request.limit + 1, order=request.order, after=after)
            more = len(rows) > request.limit
            rows = rows[: request.limit]
            show([_event(r) for r in rows])
            after = rows[-1].seq if more else None
            if after is None or not args.all:
                break
    else:
        with _client(args, config) as client:
            while True:
                data = client.request("query", body)
                if "after" not in body:
                    _unindexed_hint(data.get("unindexed_where") or [])
                show(data["events"])
                after = data["next"]
                if after is None or not args.all:
                    break
                body["after"] = after
    if after is not None:
        print(f"next: {after} (use --after {after}, or --all)", file=sys.stderr)
    return 0


def cmd_latest(args: argparse.Namespace, config: Config) -> int:
    body = {"key": args.key, "type": _one_or_list(args.type), "source": _one_or_list(args.source),
            "where": _where(args.where), "after": None if args.after is None else _json_or_text(args.after),
            "limit": args.limit}
    body = {k: v for k, v in body.items() if v is not None}
    show = _events_out(args.format, key=args.key)
    if args.db:
        from sidecar.storage.queries import json_path

        reader = _local(args, config)
        request = _convert(body, requests.LatestRequest)
        try:
            path = json_path(request.key, field="key")
        except FilterError as exc:
            raise requests.bad_filter(exc) from None
        cond = _conditions(requests.QueryRequest(type=request.type, source=request.source,
                                                 where=request.where))
        after = request.after
        while True:
            found = reader.latest_page(cond, path, limit=request.limit, after=after,
                                       max_bytes=config.api.max_response_bytes)
            show([_event(e) for e in found.events])
            indexed, after = found.indexed, found.next
            if after is None or not args.all:
                break
    else:
        with _client(args, config) as client:
            while True:
                data = client.request("latest", body)
                show(data["events"])
                indexed, after = data["indexed"], data["next"]
                if after is None or not args.all:
                    break
                body["after"] = after
    if not indexed:
        print(f"hint: {args.key} has no index: every matching event was read (add it to "
              "[indexes] paths)", file=sys.stderr)
    if after is not None:
        shown = msgspec.json.encode(after).decode()
        print(f"next: {shown} (use --after {shown!r}, or --all)", file=sys.stderr)
    return 0


def _unindexed_hint(keys: list[str]) -> None:
    if keys:
        print(f"hint: where on {', '.join(keys)} ran without an index (a scan); add the path to "
              "[indexes] paths", file=sys.stderr)


def cmd_get(args: argparse.Namespace, config: Config) -> int:
    if args.db:
        row = _local(args, config).get(args.id)
        if row is None:
            raise RequestError("not_found", f"no event with id {args.id!r}")
        event: Any = _event(row)
    else:
        with _client(args, config) as client:
            event = client.get(args.id)
    if args.format == "table":
        render.key_values(sys.stdout, event)
    else:
        _print(sys.stdout.buffer, [event])
    return 0


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    body = {**_filter_body(args), "batch": args.batch, "rate": args.rate, "pace": args.pace,
            "speed": args.speed, "live": args.live or None, "max_duration": args.max_duration}
    body = {k: v for k, v in body.items() if v is not None}
    bar = Progress("replay", unit=" events")  # count, rate and the last seq; a terminal only
    progress = bar if bar.enabled else None
    show = _events_out(args.format)
    if args.db:
        for option in ("rate", "pace", "speed", "live", "max_duration"):
            if option in body:
                raise UsageError("needs a running sidecar (leave out --db)",
                                 option=f"--{option.replace('_', '-')}")
        pages = _local_replay(_local(args, config), body)
        try:
            for page in pages:
                show(page, progress)
        finally:
            bar.close()
        return 0
    try:
        with _stop_signals(), _client(args, config) as client:
            replay = client.replay(**body)
            messages = replay.messages()
            try:
                for message in messages:
                    if message.get("events"):
                        show(message["events"], progress)
                    elif message.get("caught_up") and progress is not None:
                        progress.note(f"caught up at seq {message.get('last')}; waiting for new "
                                      "events (Ctrl-C stops)")
            finally:
                messages.close()  # an interrupted stream is cancelled
                bar.close()
    except _Stopped as stop:  # SIGTERM, SIGHUP: cancelled and disconnected like Ctrl-C
        return 128 + stop.signum
    return 0


class _Stopped(BaseException):
    """Raised in the main thread by SIGTERM or SIGHUP; like KeyboardInterrupt, not an Exception,
    so the clean-up on the way out (cancel the stream, disconnect) is all that runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal, a dropped ssh session, ``timeout``) stop a replay
    as Ctrl-C does. A second one kills at once (the connection's Will still cancels)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, frame: object) -> None:
        for s in stops:
            signal.signal(s, signal.SIG_DFL)
        raise _Stopped(signum)

    previous = [signal.signal(s, stop) for s in stops]
    try:
        yield
    finally:
        for s, handler in zip(stops, previous, strict=True):
            signal.signal(s, handler)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "query": cmd_query, "get": cmd_get, "latest": cmd_latest, "replay": cmd_replay,
}


# ------------------------------------------------------------------------------ helpers
def _one_or_list(values: list[str] | None) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _json_or_text(raw: str) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw


def _where(items: list[str] | None) -> dict[str, Any] | None:
    where: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep:
            raise RequestError("bad_request", f"--where {item!r}: expected PATH=VALUE",
                               field="where")
        where[key] = _json_or_text(raw)
    return where or None


def _filter_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "type": _one_or_list(args.type), "source": _one_or_list(args.source), "topic": args.topic,
        "since": cliargs.parse_time(args.since, "--since"),
        "until": cliargs.parse_time(args.until, "--until"),
        "correlation_id": args.correlation_id, "causation_id": args.causation_id,
        "trace_id": args.trace_id, "after": args.after, "where": _where(args.where),
    }


def _convert(body: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        raise requests.validation_error(str(exc)) from None


def _conditions(request: requests.Filter, indexed: set[str] | None = None) -> Conditions:
    """A filter the database refuses is answered as the sidecar would: ``bad_request`` (exit 2)."""
    try:
        return conditions(request, indexed=indexed or set())
    except FilterError as exc:
        raise requests.bad_filter(exc) from None


def _event(event: StoredEvent) -> dict[str, Any]:
    """An event read from the file, as a JSON answer from the sidecar shows it."""
    return msgspec.structs.asdict(requests.event_out(event, "json"))


def _local(args: argparse.Namespace, config: Config) -> Reader:
    return Reader(open_reader(config.database, path=args.db))


def _local_replay(reader: Reader, body: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """The pages (``batch`` events each) a replay of the file sends, in sequence order."""
    request = _convert(body, requests.ReplayRequest)
    cond = _conditions(request)
    after = request.after
    while True:
        rows = reader.page(cond, limit=request.batch, after=after)
        if rows:
            yield [_event(row) for row in rows]
        if len(rows) < request.batch:
            return
        after = rows[-1].seq


def _client(args: argparse.Namespace, config: Config) -> Any:
    from sidecar.client import SidecarClient

    mqtt = config.mqtt
    tls = mqtt.tls
    client = SidecarClient(
        args.host or mqtt.host, args.port or mqtt.port, protocol=args.protocol or mqtt.protocol,
        base_topic=args.base_topic or config.api.base_topic, timeout=args.timeout,
        username=mqtt.username, password=mqtt.password,
        tls_ca=tls.ca if tls else None, tls_cert=tls.cert if tls else None,
        tls_key=tls.key if tls else None, tls_insecure=tls.insecure if tls else False)
    return _Connected(client)


class _Connected:
    """``with``: connect, and turn a timeout into a BrokerError (exit code 5)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __enter__(self) -> Any:
        return self.client.connect()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.client.close()
        if isinstance(exc, TimeoutError):
            raise BrokerError(str(exc)) from None


def _events_out(fmt: str, *, key: str | None = None) -> Callable[..., None]:
    """How a command prints each page of events: JSON lines, or (``table``) the rows of one
    ``render.EventTable`` (its header before the first row; ``key``: ``latest``'s column)."""
    if fmt != "table":
        return lambda events, progress=None: _print(sys.stdout.buffer, events, progress)
    table = render.EventTable(sys.stdout, key=key)

    def show(events: Iterable[Any], progress: Progress | None = None) -> None:
        table.events(_counted(events, progress))

    return show


def _counted(events: Iterable[Any], progress: Progress | None) -> Iterator[Any]:
    for event in events:
        yield event
        if progress is not None:
            progress.advance(detail=f"seq {event.get('seq')}")


def _print(out: Any, events: Iterable[Any], progress: Progress | None = None) -> None:
    encode = msgspec.json.encode
    for event in events:
        out.write(encode(event) + b"\n")
        if progress is not None:
            progress.advance(detail=f"seq {event.get('seq')}")
    out.flush()


# what other command modules (``cli.kv``, ``cli.search``) share of these
add_connection_options = _connection
add_format_option = _format
add_filter_options = _filters
FILTERS_HELP = _FILTERS_HELP
filter_body = _filter_body
convert = _convert
checked_conditions = _conditions
event_json = _event
print_lines = _print
local_reader = _local
connected = _client
