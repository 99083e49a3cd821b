"""Operator commands: purge, check, recover, backup, export, import (thin adapters over the
library; each works while the daemon runs, in another process)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from sidecar.cli import args as cliargs
from sidecar.cli.progress import Progress
from sidecar.config import Config
from sidecar.core.codecs import explain_validation
from sidecar.core.units import format_size
from sidecar.errors import CorruptDatabaseError, FilterError, InputFileError, RecoveryLossError, UsageError

if TYPE_CHECKING:
    from sidecar.storage.integrity import TableRecovery


def _config_arg(parser: argparse.ArgumentParser) -> None:
    cliargs.add_database_options(parser)


def add_parsers(sub: Any) -> None:
    """Add the operator commands to the CLI's subparsers."""
    p = sub.add_parser("purge", help="delete what [retention] does not keep",
                       description="Run the retention purge now (the daemon also runs it every "
                                   "[retention] interval). Example: kairo-sidecar purge --dry-run "
                                   "--config /etc/kairo-sidecar/sidecar.toml")
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    _config_arg(p)

    p = sub.add_parser("check", help="full integrity check and a summary of the database",
                       description="Check the database (or PATH) with PRAGMA integrity_check and "
                                   "summarise it. Exit 0 if sound, 6 if damaged. Example: "
                                   "kairo-sidecar check /var/backups/kairo.db")
    p.add_argument("path", nargs="?", metavar="PATH", help="database file (default: [database] url)")
    p.add_argument("--quick", action="store_true", help="quick_check instead (faster, fewer checks)")
    _config_arg(p)

    p = sub.add_parser("recover", help="salvage what can be read from a damaged database",
                       description="Copy every readable row of SRC into the new database DEST "
                                   "(SRC is never changed). Example: kairo-sidecar recover "
                                   "/var/lib/kairo-sidecar/kairo.db /var/lib/kairo-sidecar/recovered.db")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    cliargs.add_config_option(p)

    p = sub.add_parser("backup", help="consistent copy of the database while the daemon runs",
                       description="Copy the database with SQLite's online backup API. Example: "
                                   "kairo-sidecar backup /mnt/usb/kairo-$(date +%%F).db")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    _config_arg(p)

    p = sub.add_parser("export", help="write events as JSON lines",
                       description="Export events (JSON lines, seq order) with the filters of "
                                   "queries. Example: kairo-sidecar export --type 'kairo.sensor.*' "
                                   "--since 7d --output sensors.jsonl")
    p.add_argument("--output", "-o", metavar="FILE", default="-", help="default: standard output")
    p.add_argument("--type", action="append", metavar="TYPE", help="event type or glob "
                   "(repeatable)")
    p.add_argument("--source", action="append", metavar="SOURCE", help="event source (repeatable)")
    p.add_argument("--topic", metavar="FILTER", help="MQTT topic filter (+ and # allowed)")
    p.add_argument("--since", metavar="WHEN", help=f"created at or after: {cliargs.TIME_HELP}")
    p.add_argument("--until", metavar="WHEN", help="created before (same forms as --since)")
    p.add_argument("--correlation-id", metavar="ID")
    p.add_argument("--causation-id", metavar="ID")
    p.add_argument("--trace-id", metavar="ID")
    _config_arg(p)

    p = sub.add_parser("import", help="import an export file (idempotent)",
                       description="Insert the events of FILE (an export; - for standard input) "
                                   "that are not stored yet; importing twice adds nothing. "
                                   "Example: kairo-sidecar import sensors.jsonl")
    p.add_argument("file", metavar="FILE")
    _config_arg(p)

    p = sub.add_parser("copy", help="copy a whole store to another database (resumable)",
                       description="Copy every event, dead letter and key-value entry of the "
                                   "database FROM into TO (created and migrated if need be), "
                                   "either direction between SQLite and PostgreSQL. Resumable: "
                                   "run it again after an interruption and it continues; an id "
                                   "TO already holds is not copied twice. Example: kairo-sidecar "
                                   "copy --from sqlite:///var/lib/kairo-sidecar/kairo.db "
                                   "--to postgresql://kairo@central/kairo")
    p.add_argument("--from", dest="source", metavar="URL", required=True,
                   help="sqlite:///PATH or postgresql://USER@HOST/DB")
    p.add_argument("--to", dest="target", metavar="URL", required=True, help="the same forms")
    p.add_argument("--batch-size", type=int, default=2000, metavar="N",
                   help="events per transaction (default 2000)")
    cliargs.add_config_option(p)


# ------------------------------------------------------------------------------------ purge
def _cmd_purge(args: argparse.Namespace, config: Config) -> int:
    from sidecar.core.events import now_ms
    from sidecar.storage import diskguard
    from sidecar.storage.db import is_sqlite
    from sidecar.storage.purge import Policy, PurgeRun, plan
    from sidecar.storage.sqlite_errors import retry_busy
    from sidecar.storage.startup import open_store

    policy = Policy.from_config(config.retention)
    files = is_sqlite(config.database)  # the disk guard watches a file system: SQLite only
    guarded = files and not diskguard.MinFree.parse(config.retention.min_free).off
    if not policy.active and not guarded:
        print("retention sets no limit ([retention] max_age, max_events, max_db_bytes, rules and "
              "min_free are all off): nothing to purge")
        return 0
    if args.dry_run:
        from sidecar.storage.reads import open_reader

        reader = open_reader(config.database)  # query_only: the file stays byte for byte

        def plan_all() -> list[Any]:
            lines = plan(reader, policy, now_ms()) if policy.active else []
            guard = (diskguard.plan(reader, reader.database, config.retention, now_ms())
                     if files else None)
            return lines + ([guard] if guard is not None else [])

        try:
            lines = retry_busy(plan_all, what="plan the purge", path=str(reader.database))
        finally:
            reader.close()
        print(f"{'events':>10}  oldest                    newest                    reason")
        for line in lines:
            print(f"{line.rows:>10}  {_when(line.oldest_ms):<24}  {_when(line.newest_ms):<24}  "
                  f"{line.reason}")
        print("dry run: nothing was deleted")
        return 0
    db = open_store(config.database, schema="unchecked", create=False, shared=True)
    try:
        runs: list[PurgeRun] = []
        guarded_runs: list[diskguard.GuardResult] = []
        with Progress("purge", unit=" steps") as progress:
            def run() -> None:
                purge = PurgeRun(db, policy, now_ms())
                runs.append(purge)
                while policy.active and purge.step():
                    progress.update(sum(r.result.steps for r in runs),
                                    detail=f"{sum(r.result.events for r in runs):,} events deleted")
                if files:
                    guarded_runs.append(diskguard.DiskGuard.from_config(db, db.database,
                                                                        config.retention).run())

            retry_busy(run, what="purge", path=str(db.database))
        deleted = sum(r.result.events for r in runs)
        dead = sum(r.result.dead_letters for r in runs)
        freed = sum(r.result.pages_freed for r in runs)
        last = runs[-1].result
        guard = guarded_runs[-1] if guarded_runs else diskguard.GuardResult()
        print(f"deleted {deleted} events (age {last.by_age}, count {last.by_count}, size "
              f"{last.by_size}) and {dead} dead letters; {freed} pages returned to the file system")
        if guard.deleted:
            print(f"disk guard (min_free = {config.retention.min_free}): deleted {guard.deleted} "
                  f"of the oldest events; {guard.pages_freed} pages returned to the file system")
        return 0
    finally:
        db.close()


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------ check
def _cmd_check(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.cipher import database_key
    from sidecar.storage.db import is_sqlite, sqlite_path
    from sidecar.storage.integrity import check

    if args.path and args.db and Path(args.path) != Path(args.db):
        raise UsageError(f"names another database than --db {args.db}", option="PATH")
    target = args.path or args.db
    if target and "://" in str(target):
        config = msgspec.structs.replace(
            config, database=msgspec.structs.replace(config.database, url=str(target)))
        target = None
    if not target and not is_sqlite(config.database):
        return _check_postgres(config)
    path = Path(args.path) if args.path else sqlite_path(config.database.url)
    report = check(path, full=not args.quick, key=database_key(config.database))
    s = report.storage
    print(f"database      {path}")
    how = "quick_check" if args.quick else "integrity_check"
    print(f"integrity     {'ok' if report.ok else 'DAMAGED'} ({how})")
    print(f"events        {_maybe(report.events)} (seq {_maybe(report.seq_range[0])} .. "
          f"{_maybe(report.seq_range[1])})")
    print(f"created       {_when(report.created_range[0])} .. {_when(report.created_range[1])}")
    print(f"dead letters  {_maybe(report.dead_letters)}")
    if s is not None:
        print(f"file          {format_size(s.db_bytes)} ({s.pages} pages of {s.page_size} B, "
              f"{s.free_pages} free, auto_vacuum {s.auto_vacuum})")
        print(f"wal           {format_size(s.wal_bytes)}")
    print(f"migrations    {', '.join(report.migrations) or '-'}")
    if not report.ok:
        for problem in report.problems[:20]:
            print(f"problem       {problem}")
        raise CorruptDatabaseError(path=str(path), problems=report.problems)
    return 0


def _check_postgres(config: Config) -> int:
    """``check`` on PostgreSQL: the schema and row counts; the page check is the server's."""
    from sidecar.storage.pgcheck import describe

    report = describe(config.database)
    print(f"database      {report.url}")
    print("integrity     not applicable: SQLite's integrity_check reads a file's pages; "
          "PostgreSQL checks its own (data checksums, amcheck)")
    print(f"events        {report.events} (seq {_maybe(report.seq_range[0])} .. "
          f"{_maybe(report.seq_range[1])})")
    print(f"created       {_when(report.created_range[0])} .. {_when(report.created_range[1])}")
    print(f"dead letters  {report.dead_letters}")
    print(f"size          {format_size(report.database_bytes)} (pg_database_size)")
    print(f"migrations    {', '.join(report.migrations) or '-'}")
    if report.pending:
        print(f"pending       {', '.join(report.pending)} (run `kairo-sidecar migrate`)")
    return 0


def _maybe(value: object) -> str:
    return "unreadable" if value is None else str(value)


# ------------------------------------------------------------------------------------ recover
def _cmd_recover(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.integrity import recover

    with Progress("recover", unit=" rowids") as progress:
        report = recover(Path(args.src), Path(args.dest), config=config.database,
                         progress=progress.update)
    for table in report.tables:
        print(_recovered_line(table))
    print(f"wrote {report.dest} ({'passes' if report.dest_ok else 'FAILS'} integrity_check) in "
          f"{report.seconds}s; point [database] url at it, or move it into place while the "
          "daemon is stopped")
    if not report.dest_ok:
        return 1
    if report.lost:
        raise RecoveryLossError(dest=str(report.dest), lost=report.lost,
                                exact=all(t.exact for t in report.tables if not t.complete))
    return 0


def _recovered_line(table: TableRecovery) -> str:
    """``events        recovered 2960 of 3000 expected, lost 40 (entries in index events_id)``."""
    upto = "" if table.exact else "at most "
    expected = "unknown" if table.expected is None else f"{upto}{table.expected}"
    lost = "unknown" if table.lost is None else f"{'up to ' if upto else ''}{table.lost}"
    line = (f"{table.table:<13} recovered {table.rows} of {expected} expected, lost {lost} "
            f"({table.expected_from})")
    if table.skipped:
        line += f", {table.skipped} damaged rows skipped"
    if table.unreadable:
        ranges = ", ".join(f"{lo}..{hi}" if lo != hi else str(lo) for lo, hi in table.unreadable[:10])
        line += f", unreadable rowids {ranges}" + (" ..." if len(table.unreadable) > 10 else "")
    if table.error:
        line += f" (table unreadable: {table.error})"
    return line


# ------------------------------------------------------------------------------------ backup
def _cmd_backup(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.backup import backup

    with Progress("backup", unit=" pages") as progress:
        result = backup(config.database, Path(args.dest), force=args.force,
                        progress=progress.update)
    print(f"backup {result.dest}: {format_size(result.bytes)}, {result.events} events, "
          f"{result.seconds}s")
    return 0


# ------------------------------------------------------------------------------------ export
def export_terms(args: argparse.Namespace) -> list[Any]:
    """The CLI's filters -> the WHERE terms ``queries`` builds for the same request fields
    (decoded as the API's ``Filter``, so the options have the wire limits)."""
    from sidecar.api.protocol import Filter
    from sidecar.storage.queries import conditions

    fields: dict[str, Any] = {
        "type": args.type, "source": args.source, "topic": args.topic,
        "since": cliargs.parse_time(args.since, "--since"),
        "until": cliargs.parse_time(args.until, "--until"),
        "correlation_id": args.correlation_id, "causation_id": args.causation_id,
        "trace_id": args.trace_id,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    try:
        request = msgspec.convert(fields, Filter)
        return list(conditions(request).terms)
    except msgspec.ValidationError as exc:
        field = explain_validation(str(exc))[1]
        raise UsageError("invalid value", option=f"--{field.replace('_', '-')}") from None
    except FilterError as exc:  # its message names the field already
        message = exc.message.removeprefix(f"{exc.field}: ")
        raise UsageError(message, option=f"--{exc.field.replace('_', '-')}") from None


def _cmd_export(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.reads import open_reader
    from sidecar.storage.transfer import export

    terms = export_terms(args)
    db = open_reader(config.database)
    progress = Progress("export", unit=" events")  # count_first: a total only for the bar
    out: IO[bytes]
    try:
        if args.output == "-":
            out = sys.stdout.buffer
            n = export(db, out, terms, progress=progress.update, count_first=progress.enabled)
        else:
            with open(args.output, "wb") as out:
                n = export(db, out, terms, progress=progress.update, count_first=progress.enabled)
    finally:
        db.close()
        progress.close()
    print(f"exported {n} events", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ import
def _cmd_import(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.transfer import import_events, open_for_import

    path = args.file
    if path != "-" and not Path(path).is_file():
        raise InputFileError(f"{path}: no such file")
    total = Path(path).stat().st_size if path != "-" else None
    progress = Progress("import", total, amount=format_size)  # bytes read of the file
    db = open_for_import(config.database)
    try:
        if path == "-":
            result = import_events(db, sys.stdin.buffer, source="standard input",
                                   progress=progress.update)
        else:
            with open(path, "rb") as fh:
                result = import_events(db, _lines(fh), source=path, progress=progress.update)
    finally:
        db.close()
        progress.close()
    print(f"imported {result.inserted} new events; {result.already_present} were already stored")
    if result.kv_lines:
        print(f"key-value store: {result.kv_written} of {result.kv_lines} entries written (the "
              "others were stored at the same or a newer version)")
    return 0


def _lines(fh: IO[bytes]) -> Iterator[bytes]:
    yield from fh


def _cmd_copy(args: argparse.Namespace, config: Config) -> int:
    import msgspec.structs

    from sidecar.storage.copying import copy_store
    from sidecar.storage.dialect import masked_url

    if args.batch_size < 1:
        raise UsageError("must be at least 1", option="--batch-size")
    databases = []
    for option, url in (("--from", args.source), ("--to", args.target)):
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise UsageError(f"{masked_url(url)!r} is not a database URL: sqlite:///PATH or "
                             "postgresql://USER@HOST/DB", option=option)
        databases.append(msgspec.structs.replace(config.database, url=url))
    with Progress("copy", unit=" events") as progress:
        result = copy_store(databases[0], databases[1], batch_size=args.batch_size,
                            progress=progress.update)
    resumed = f" (resumed after source seq {result.resumed_after})" if result.resumed_after else ""
    print(f"copied {result.events} events{resumed}: {result.inserted} new, "
          f"{result.events - result.inserted} already there; {result.dead_letters} dead letters; "
          f"{result.kv_written} key-value entries written")
    if result.refused:
        print(f"{result.refused} events refused by the target (they hold U+0000, which "
              "PostgreSQL cannot store): kept there as dead letters (dead-letters list)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "purge": _cmd_purge, "check": _cmd_check, "recover": _cmd_recover, "backup": _cmd_backup,
    "export": _cmd_export, "import": _cmd_import, "copy": _cmd_copy,
}
