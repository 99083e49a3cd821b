"""``kairo-sidecar stats`` and ``kairo-sidecar dead-letters list|show|reingest``: thin adapters
over ``reads``/``client`` (stats) and ``letters`` (dead letters); ``cli`` only wires them in."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from sidecar.cli import args as cliargs
from sidecar.cli import render
from sidecar.cli.history import _client, _connection
from sidecar.config import Config
from sidecar.errors import FilterError, UsageError
from sidecar.ingest import letters
from sidecar.storage.reads import Reader, open_reader

_LETTER_COLUMNS = (render.Column("id", 8), render.Column("received", 20), render.Column("size", 9),
                   render.Column("cut", 3), render.Column("topic", 28), render.Column("reason", 0))


# ------------------------------------------------------------------------------ parsers
def add_parsers(sub: Any) -> None:
    """Add ``stats`` and ``dead-letters`` to the ``kairo-sidecar`` sub-command parsers."""
    p = sub.add_parser(
        "stats", help="counters and figures of a running sidecar (or of a database file)",
        description="Ask a running sidecar for its stats through the broker, or read the "
                    "figures a database file holds with --db. Example: kairo-sidecar stats "
                    "--format table; kairo-sidecar stats --db /var/lib/kairo-sidecar/kairo.db")
    _connection(p)
    _format(p)

    p = sub.add_parser(
        "dead-letters", help="list, show and re-ingest dead letters",
        description="The messages ingest refused. Example: kairo-sidecar dead-letters list "
                    "--since 1d --format table")
    letters_sub = p.add_subparsers(dest="letters_command", metavar="list|show|reingest",
                                   required=True)
    p = letters_sub.add_parser(
        "list", help="dead letters, newest first",
        description="Print matching dead letters (no payload), newest first, one page. Example: "
                    "kairo-sidecar dead-letters list --reason 'too large' --limit 20")
    _letter_filters(p)
    p.add_argument("--limit", type=int, default=50, help="dead letters per page (default 50)")
    p.add_argument("--after", type=int, metavar="ID", help="the page after this id (the cursor "
                   "printed on stderr)")
    _format(p)
    _database(p)

    p = letters_sub.add_parser(
        "show", help="one dead letter with its payload",
        description="Print the whole dead letter as JSON: the payload as text when it is UTF-8, "
                    "else base64 (encoding says which). Example: kairo-sidecar dead-letters show 42")
    p.add_argument("id", type=int, metavar="ID")
    _database(p)

    p = letters_sub.add_parser(
        "reingest", help="decode dead letters again and store them as events",
        description="Run the stored bytes through ingest again (with this [ingest] config) and "
                    "store the events; a stored one's dead letter is deleted in the same "
                    "transaction, so running it twice stores nothing twice. Exit 1 if any stays. "
                    "Example: kairo-sidecar dead-letters reingest --all --reason 'too large' "
                    "--config /etc/kairo-sidecar/sidecar.toml")
    p.add_argument("id", type=int, nargs="?", metavar="ID", help="one dead letter")
    p.add_argument("--all", action="store_true", help="every dead letter matching the filters")
    _letter_filters(p)
    _database(p)


def _format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", type=cliargs.choice(render.FORMATS), default="json",
                        metavar="{json,table}",
                        help="json (default) or table: readable columns for a terminal")


def _database(parser: argparse.ArgumentParser) -> None:
    cliargs.add_database_options(parser)


def _letter_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", metavar="FILTER", help="MQTT topic filter (+ and # allowed)")
    parser.add_argument("--reason", metavar="TEXT", help="reason contains TEXT (any case)")
    parser.add_argument("--since", metavar="WHEN", help="received at or after: RFC 3339, epoch "
                        "ms, or an age such as 7d")


# ------------------------------------------------------------------------------ stats
def cmd_stats(args: argparse.Namespace, config: Config) -> int:
    if args.db:
        reader = Reader(open_reader(config.database, path=args.db))
        try:
            data: dict[str, Any] = {"database": str(args.db), **reader.figures()._asdict()}
        finally:
            reader.close()
    else:
        with _client(args, config) as client:
            data = client.stats()
    if args.format == "table":
        render.key_values(sys.stdout, data)
    else:
        _json_line(data)
    return 0


# ------------------------------------------------------------------------------ dead letters
def cmd_dead_letters(args: argparse.Namespace, config: Config) -> int:
    return _LETTER_COMMANDS[args.letters_command](args, config)


def _list(args: argparse.Namespace, config: Config) -> int:
    flt = _filter(args)
    db = open_reader(config.database, path=args.db)
    try:
        found, after = _command_line(lambda: letters.page(db, flt, limit=args.limit,
                                                          after=args.after))
    finally:
        db.close()
    if args.format == "table":
        render.Table(sys.stdout, _LETTER_COLUMNS).rows(
            (x.id, render.when(x.received_at), x.size, "yes" if x.truncated else "", x.topic,
             x.reason) for x in found)
    else:
        for letter in found:
            _json_line(letter)
    if after is not None:
        print(f"next: {after} (use --after {after})", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    db = open_reader(config.database, path=args.db)
    try:
        letter = letters.get(db, args.id)
    finally:
        db.close()
    _json_line(letter)
    return 0


def _reingest(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.startup import open_store

    flt = _filter(args)
    if (args.id is None) == (not args.all):
        raise UsageError("give one dead letter ID, or --all (with filters to narrow it)",
                         option="ID")
    if args.id is not None and flt != letters.LetterFilter():
        raise UsageError("--topic, --reason and --since go with --all, not with an ID",
                         option="ID")
    ids: list[int] = [args.id] if args.id is not None else []
    if args.all:  # found on a read connection (it has the topic-filter function)
        reader = open_reader(config.database, path=args.db)
        try:
            ids = _command_line(lambda: list(letters.matching_ids(reader, flt)))
        finally:
            reader.close()
    db = open_store(config.database, schema="current", create=False, shared=True)
    counts: dict[str, int] = {}
    try:
        for outcome in letters.reingest(db, ids, max_payload_bytes=config.ingest.max_payload_bytes):
            counts[outcome.result] = counts.get(outcome.result, 0) + 1
            _json_line(outcome)
    finally:
        db.close()
    stored, same = counts.get("stored", 0), counts.get("already_stored", 0)
    left = len(ids) - stored - same
    print(f"re-ingested {stored + same} of {len(ids)} dead letters ({stored} stored, {same} "
          f"already stored); {left} left (failed {counts.get('failed', 0)}, truncated "
          f"{counts.get('truncated', 0)}, not found {counts.get('not_found', 0)})",
          file=sys.stderr)
    return 1 if left else 0


_LETTER_COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "list": _list, "show": _show, "reingest": _reingest,
}

COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "stats": cmd_stats, "dead-letters": cmd_dead_letters,
}


# ------------------------------------------------------------------------------ helpers
def _json_line(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")
    sys.stdout.buffer.flush()


def _filter(args: argparse.Namespace) -> letters.LetterFilter:
    since = cliargs.parse_time(args.since, "--since")
    return letters.LetterFilter(topic=args.topic, reason=args.reason, since=since)


def _command_line(call: Callable[[], Any]) -> Any:
    """A filter the library refuses is a bad command line (exit 2), naming the option."""
    try:
        return call()
    except FilterError as exc:
        raise UsageError(exc.message.removeprefix(f"{exc.field}: "),
                         option=f"--{exc.field}") from None
