"""``kairo-sidecar project list|rebuild``: the configured projections, and their rebuild.

``rebuild NAME`` recomputes a projection's keys from the event log (``sidecar.storage.
projections.rebuild``): safe beside the running daemon (the events are read in chunks without
the write lock; the swap is one short transaction), so the kv state is never the only copy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sidecar.cli import args as cliargs
from sidecar.cli.progress import Progress
from sidecar.config import Config, compile_projections
from sidecar.errors import UsageError


def add_parsers(sub: Any) -> None:
    """Add ``project`` with its sub-commands to the ``kairo-sidecar`` sub-command parsers."""
    top = sub.add_parser("project", help="projections: list them, rebuild one from the events",
                         description="The [[projections]] of the configuration. Example: "
                                     "kairo-sidecar project rebuild plugins --config sidecar.toml")
    ops = top.add_subparsers(dest="project_command", required=True)
    listing = ops.add_parser("list", help="print each projection and the keys it holds",
                             description="Example: kairo-sidecar project list --config "
                                         "sidecar.toml")
    cliargs.add_database_options(listing)
    rebuild = ops.add_parser("rebuild", help="recompute a projection's keys from the event log",
                             description="Delete the keys under the projection's prefix and "
                                         "fold every matching event again, in seq order; safe "
                                         "while the daemon runs. Example: kairo-sidecar project "
                                         "rebuild plugins --config /etc/kairo-sidecar/sidecar.toml")
    rebuild.add_argument("name", metavar="NAME")
    cliargs.add_database_options(rebuild)


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.kv import count_prefix
    from sidecar.storage.reads import open_reader

    rules = compile_projections(config.projections)
    if not rules:
        print("no projections configured ([[projections]] in the configuration)")
        return 0
    reader = open_reader(config.database)
    try:
        for rule, raw in zip(rules, config.projections, strict=True):
            keys = count_prefix(reader, rule.prefix)
            value = f" value={raw.value}" if raw.value else ""
            print(f"{rule.name}: type={rule.type_glob} key={rule.template} mode={rule.mode}"
                  f"{value} keys={keys}")
    finally:
        reader.close()
    return 0


def cmd_rebuild(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.projections import Folder, rebuild
    from sidecar.storage.sqlite_errors import retry_busy
    from sidecar.storage.startup import open_store

    rules = compile_projections(config.projections)
    named = [rule for rule in rules if rule.name == args.name]
    if not named:
        known = ", ".join(rule.name for rule in rules) or "none configured"
        raise UsageError(f"no projection named {args.name!r} (known: {known})", option="NAME")
    rule = named[0]
    folder = Folder(rules, max_value_bytes=config.kv.max_value_bytes)
    db = open_store(config.database, schema="current", create=False, shared=True)
    try:
        with Progress(f"rebuild {rule.name}", unit=" events") as progress:
            def run() -> Any:
                return rebuild(db, folder, rule, progress=lambda seq, top, n: progress.update(
                    n, detail=f"seq {seq:,} of {top:,}"))

            report = retry_busy(run, what="rebuild the projection", path=str(db.database))
    finally:
        db.close()
    print(f"projection {rule.name}: {report.events} events folded, {report.removed} keys "
          f"removed, {report.keys} keys now under {rule.prefix!r}"
          + (f", {len(report.skipped)} events skipped (first: seq {report.skipped[0].seq}: "
             f"{report.skipped[0].reason})" if report.skipped else ""))
    return 0


_OPS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "list": cmd_list, "rebuild": cmd_rebuild,
}


def cmd_project(args: argparse.Namespace, config: Config) -> int:
    return _OPS[args.project_command](args, config)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {"project": cmd_project}
