"""``kairo-sidecar search QUERY`` and ``kairo-sidecar search-index status|rebuild|check``.

``search`` asks a running sidecar through the broker (``SidecarClient.search``) or, with
``--db``, reads the file directly; hits print as JSON lines ``{"event", "snippet", "rank"}``
(``--format table``: ``render.SearchTable``).
``search-index`` looks after the index (``sidecar.storage.search``): ``rebuild`` makes it
that of the configuration and indexes every existing event now with a progress bar
(resumable: interrupted, it goes on where it stopped; safe beside the running daemon: one
short transaction per step), ``status`` says how far it is, ``check`` compares it with the
events.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from sidecar.api import protocol as requests
from sidecar.cli import args as cliargs
from sidecar.cli import history, render
from sidecar.cli.progress import Progress
from sidecar.config import Config
from sidecar.core.search_query import parse
from sidecar.errors import FilterError, RequestError, StorageError

_QUERY_HELP = """query: words (boiler), "phrases" ("disk full"), prefixes (boil*), AND (or a
space), OR, NOT (a NOT b), parentheses, and a field before a term (type:alert, source:pi-4,
payload:disk). """ + history.FILTERS_HELP


def _cursor(raw: str) -> int | str:
    """``--after``: a seq (time order) or the ``rank:seq`` of a ranked page, as ``next`` shows."""
    return int(raw) if raw.isdigit() else raw


def add_parsers(sub: Any) -> None:
    """Add ``search`` and ``search-index`` to the ``kairo-sidecar`` sub-command parsers."""
    search = sub.add_parser(
        "search", help="full-text search over events (JSON lines)", epilog=_QUERY_HELP,
        description="Print the events matching QUERY as JSON lines {event, snippet, rank}, best "
                    "first. Needs [search] enabled = true. Example: kairo-sidecar search "
                    "'boil* AND NOT \"test run\"' --type 'kairo.alert.*' --since 7d")
    search.add_argument("query", metavar="QUERY")
    history.add_filter_options(search, cursor=_cursor, cursor_name="CURSOR")
    search.add_argument("--limit", type=int, help="hits per page (default 20)")
    search.add_argument("--order", type=cliargs.choice(("rank", "desc", "asc")),
                        metavar="{rank,desc,asc}",
                        help="rank: most relevant first (default); desc/asc: by time")
    search.add_argument("--all", action="store_true", help="walk every page (default: one page; "
                        "the next cursor is printed on stderr)")
    history.add_format_option(search, table="seq, time, type, rank, snippet (as the terminal "
                              "width allows), id")
    history.add_connection_options(search)

    index = sub.add_parser("search-index", help="the full-text index: status, rebuild, check",
                           description="Look after the full-text index of [search]. Example: "
                                       "kairo-sidecar search-index rebuild --config "
                                       "/etc/kairo-sidecar/sidecar.toml")
    ops = index.add_subparsers(dest="search_index_command", required=True)
    status = ops.add_parser("status", help="how far the index is",
                            description="Example: kairo-sidecar search-index status --db kairo.db")
    cliargs.add_database_options(status)
    rebuild = ops.add_parser(
        "rebuild", help="index every existing event now (progress bar; resumable)",
        description="Make the index that of the configuration's [search] (a changed one starts "
                    "again), then index the existing events not indexed yet, with a progress "
                    "bar; interrupted, it resumes where it stopped. Safe while the daemon runs. "
                    "Example: kairo-sidecar search-index rebuild --config sidecar.toml")
    rebuild.add_argument("--reset", action="store_true",
                         help="empty the index first and index every event again")
    cliargs.add_database_options(rebuild)
    check = ops.add_parser("check", help="compare the index with the events",
                           description="FTS5's integrity check and every indexed event's "
                                       "tokens against the index (reads every indexed event). "
                                       "Example: kairo-sidecar search-index check --db kairo.db")
    cliargs.add_database_options(check)


# ------------------------------------------------------------------------------ search
def cmd_search(args: argparse.Namespace, config: Config) -> int:
    body = {**history.filter_body(args), "query": args.query, "limit": args.limit,
            "order": args.order}
    body = {k: v for k, v in body.items() if v is not None}
    show = _hits_out(args.format)
    after: int | str | None = None
    if args.db:
        after, complete = _local_search(args, config, body, show)
    else:
        with history.connected(args, config) as client:
            while True:
                data = client.request("search", body)
                show(data["hits"])
                after, complete = data["next"], data["complete"]
                if data.get("rank_window") is not None:
                    _window_note(data["rank_window"])
                if after is None or not args.all:
                    break
                body["after"] = after
    if not complete:
        print("note: existing events are still being indexed; older ones may be missing "
              "(kairo-sidecar search-index status)", file=sys.stderr)
    if after is not None:
        print(f"next: {after} (use --after {after}, or --all)", file=sys.stderr)
    return 0


def _hits_out(fmt: str) -> Callable[[list[Any]], None]:
    """How ``search`` prints each page of hits: JSON lines, or the rows of one table."""
    if fmt == "table":
        return render.SearchTable(sys.stdout).hits
    return lambda hits: history.print_lines(sys.stdout.buffer, hits)


def _local_search(args: argparse.Namespace, config: Config, body: dict[str, Any],
                  show: Callable[[list[Any]], None]) -> tuple[int | str | None, bool]:
    from sidecar.storage.search import SearchUnavailable

    request = history.convert(body, requests.SearchRequest)
    try:
        fts = parse(request.query)
    except FilterError as exc:
        raise requests.bad_filter(exc) from None
    reader = history.local_reader(args, config)
    cond = history.checked_conditions(msgspec.structs.replace(request, after=None),
                                      reader.path_indexes() if request.where else set())
    after = request.after
    while True:
        try:
            page = reader.search_page(fts, cond, order=request.order, limit=request.limit,
                                      after=after, marks=("[", "]"),
                                      max_bytes=config.api.max_response_bytes,
                                      rank_window=config.search.rank_window)
        except SearchUnavailable as exc:
            raise RequestError(exc.code, str(exc)) from None
        except FilterError as exc:
            raise requests.bad_filter(exc) from None
        show([{"event": history.event_json(event), "snippet": hit.snippet,
                                   "rank": hit.rank} for hit, event in page.hits])
        after = page.next
        if page.window is not None:
            _window_note(page.window)
        if after is None or not args.all:
            return after, page.state.complete


def _window_note(window: int) -> None:
    print(f"note: ranked among the newest {window:,} matches ([search] rank_window); use "
          "--order desc or narrower filters to reach older ones", file=sys.stderr)


# ------------------------------------------------------------------------------ search-index
def _open(config: Config) -> Any:
    from sidecar.storage.startup import open_store

    return open_store(config.database, schema="current", create=False, shared=True)


def _status_line(db: Any) -> str:
    from sidecar.storage import search

    with db.atomic():
        cursor = db.cursor()
        state = search.state(cursor)
        waiting = search.pending(cursor)
    if not state.enabled:
        return "search: off ([search] enabled = false, or the daemon has not started with it)"
    if state.complete:
        return "search: on, every event indexed"
    return (f"search: on, {waiting:,} existing events not indexed yet (indexed: seq <= "
            f"{state.backfilled_to:,} and seq >= {state.live_from:,})")


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    db = _open(config)
    try:
        print(_status_line(db))
    finally:
        db.close()
    return 0


def cmd_rebuild(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage import search
    from sidecar.storage.sqlite_errors import retry_busy

    if not config.search.enabled:
        raise StorageError("search is off in this configuration: set [search] enabled = true "
                           "(the same [search] as the daemon's)")
    db = _open(config)
    try:
        if args.reset:
            retry_busy(lambda: search.sync(db, msgspec.structs.replace(config.search,
                                                                        enabled=False)),
                       what="empty the search index", path=str(db.database))
        retry_busy(lambda: search.sync(db, config.search), what="set up the search index",
                   path=str(db.database))
        with db.atomic():
            waiting = search.pending(db.cursor())
        with Progress("search-index rebuild", waiting, unit=" events") as progress:
            def step() -> int:
                return search.backfill(db, limit=config.search.backfill_batch)

            total = 0
            while True:
                done = retry_busy(step, what="index events", path=str(db.database))
                if not done:
                    break
                total += done
                progress.update(total)
        print(f"indexed {total:,} existing events; " + _status_line(db))
    finally:
        db.close()
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage import search

    db = _open(config)
    try:
        search.integrity_check(db)
        print("search index ok; " + _status_line(db))
    finally:
        db.close()
    return 0


_OPS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "status": cmd_status, "rebuild": cmd_rebuild, "check": cmd_check,
}


def cmd_search_index(args: argparse.Namespace, config: Config) -> int:
    return _OPS[args.search_index_command](args, config)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "search": cmd_search, "search-index": cmd_search_index,
}
