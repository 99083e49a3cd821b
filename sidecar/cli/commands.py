"""The command line: a thin layer over the library; errors become messages and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sidecar import __version__
from sidecar.cli import admin, encryption, history, interrupts, kv, project, search, top
from sidecar.cli import args as cliargs
from sidecar.cli import inspection as inspect_cmds
from sidecar.config import Config
from sidecar.errors import CorruptDatabaseError, SidecarError, StorageError, UsageError
from sidecar.logs import configure_logging
from sidecar.storage.sqlite_errors import describe

EXIT_READER_GONE = 141  # what a shell shows for a process ended by SIGPIPE (128 + 13)


def _parser() -> argparse.ArgumentParser:
    parser = cliargs.Parser(
        prog="kairo-sidecar",
        description="Durable event store for the Kairo MQTT bus: stores kairo/# in SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"kairo-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon",
                         description="Run the daemon. Example: kairo-sidecar run --config "
                                     "/etc/kairo-sidecar/sidecar.toml")
    cliargs.add_database_options(run)

    mig = sub.add_parser("migrate", help="apply pending database migrations",
                         description="Apply pending migrations. Example: kairo-sidecar migrate "
                                     "--config sidecar.toml")
    cliargs.add_database_options(mig)

    show = sub.add_parser("config", help="print the effective configuration as JSON",
                          description="Validate and print the effective configuration. "
                                      "Example: kairo-sidecar config --config sidecar.toml")
    cliargs.add_config_option(show)
    history.add_parsers(sub)  # query, get, replay
    search.add_parsers(sub)  # search, search-index status|rebuild|check
    admin.add_parsers(sub)  # purge, check, recover, backup, export, import
    inspect_cmds.add_parsers(sub)  # stats, dead-letters
    kv.add_parsers(sub)  # kv get|put|delete|list|watch
    project.add_parsers(sub)  # project list|rebuild
    encryption.add_parsers(sub)  # keygen, encrypt, decrypt, rekey
    top.add_parsers(sub)  # top
    return parser


def _cmd_run(config: Config) -> int:
    from sidecar.app import Sidecar
    from sidecar.config import systemd_environment
    from sidecar.systemd import Notifier

    systemd = systemd_environment()
    return Sidecar(config, notifier=Notifier(systemd.notify_socket),
                   watchdog_sec=systemd.watchdog_sec).run()


def _cmd_migrate(config: Config) -> int:
    from sidecar.storage import indexes
    from sidecar.storage.startup import open_store

    applied: list[str] = []
    db = open_store(config.database, schema="migrate", on_migrated=applied.extend)
    try:
        indexes.sync(db, config.indexes.paths)  # a long index build before the daemon starts
    finally:
        db.close()
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ""))
    return 0


def _cmd_config(config: Config) -> int:
    import msgspec

    cfg = config
    if cfg.mqtt.password is not None:
        cfg = msgspec.structs.replace(cfg, mqtt=msgspec.structs.replace(cfg.mqtt, password="***"))
    for secret in ("password", "key"):
        if getattr(cfg.database, secret) is not None:
            cfg = msgspec.structs.replace(
                cfg, database=msgspec.structs.replace(cfg.database, **{secret: "***"}))
    print(msgspec.json.format(msgspec.json.encode(cfg)).decode())
    return 0


COMMANDS = {"run": _cmd_run, "migrate": _cmd_migrate, "config": _cmd_config}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader of our output went away (`kairo-sidecar export | head`): stop quietly.
        # Python's docs on SIGPIPE: point stdout at devnull so the final flush cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_READER_GONE


def _main(argv: Sequence[str] | None) -> int:
    command = "kairo-sidecar"
    try:
        args = cliargs.parse(_parser(), argv)
        command = f"kairo-sidecar {args.command}"
        config = cliargs.load(args)
        configure_logging(config.log)
        if args.command in history.COMMANDS:
            return history.COMMANDS[args.command](args, config)
        if args.command in search.COMMANDS:
            return search.COMMANDS[args.command](args, config)
        if args.command in admin.COMMANDS:
            return admin.COMMANDS[args.command](args, config)
        if args.command in encryption.COMMANDS:
            return encryption.COMMANDS[args.command](args, config)
        if args.command in kv.COMMANDS:
            return kv.COMMANDS[args.command](args, config)
        if args.command in project.COMMANDS:
            return project.COMMANDS[args.command](args, config)
        if args.command in top.COMMANDS:
            return top.COMMANDS[args.command](args, config)
        if args.command in inspect_cmds.COMMANDS:
            return inspect_cmds.COMMANDS[args.command](args, config)
        return COMMANDS[args.command](config)
    except UsageError as exc:
        exc.command = exc.command or command
        print(cliargs.describe_usage_error(exc), file=sys.stderr)
        return exc.exit_code
    except SidecarError as exc:
        print(f"kairo-sidecar: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # an SQLite error no library function turned into ours
        if not _is_database_error(exc):
            raise
        message, damaged = _database_error(exc)
        print(f"kairo-sidecar: error: {message}", file=sys.stderr)
        return CorruptDatabaseError.exit_code if damaged else StorageError.exit_code
    except KeyboardInterrupt:
        interrupts.handled()
        return 130


def _is_database_error(exc: Exception) -> bool:
    import sqlite3

    import peewee

    return isinstance(exc, sqlite3.DatabaseError | peewee.DatabaseError)


_SQLITE_WORDS = {
    "SQLITE_NOTADB": "it is not an SQLite database",
    "SQLITE_CANTOPEN": "it cannot be opened",
    "SQLITE_READONLY": "it is read-only",
    "SQLITE_PERM": "permission denied",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "an I/O error",
    "SQLITE_CORRUPT": "it is damaged (run `kairo-sidecar check`)",
}


def _database_error(exc: Exception) -> tuple[str, bool]:
    """An unexpected SQLite error -> (our words, by its code; whether the file is damaged); a
    PostgreSQL one is named by its SQLSTATE condition."""
    condition = _postgres_condition(exc)
    if condition is not None:
        return f"the database cannot be used: PostgreSQL error {condition}", False
    code = describe(exc)[1] or ""
    base = "_".join(code.split("_")[:2])  # SQLITE_IOERR_SHORT_READ -> SQLITE_IOERR
    why = _SQLITE_WORDS.get(base) or f"SQLite error {code or '(no code)'}"
    return f"the database cannot be used: {why}; it was left untouched", base == "SQLITE_CORRUPT"


def _postgres_condition(exc: BaseException) -> str | None:
    """``READ_ONLY_SQL_TRANSACTION (25006)`` for a psycopg2 error anywhere in the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        for candidate in (seen, *[a for a in seen.args if isinstance(a, BaseException)]):
            pgcode = getattr(candidate, "pgcode", None)
            if pgcode:
                from psycopg2 import errorcodes

                return f"{errorcodes.lookup(pgcode) or 'code'} ({pgcode})"
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
