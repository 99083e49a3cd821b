"""``kairo-sidecar kv get|put|delete|list|watch``: the key-value store from the command line.

Through the broker (``sidecar.client``) by default; with ``--db PATH`` get, list, put and delete
work on the database file directly (no sidecar needed; a put/delete then writes in its own
transaction beside the daemon's writer). Values print as JSON lines, or with ``--format
table`` as ``render`` lays them out (get: one field per line; list, watch: a table).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from sidecar.cli import history, render
from sidecar.config import Config, compile_projections
from sidecar.core import kv
from sidecar.core.projections import refuse_owned
from sidecar.errors import RequestError, UsageError

_READ = ("read this database file, or a postgresql:// URL, directly instead of asking a "
         "running sidecar")
_WRITE = ("write to this database file, or a postgresql:// URL, directly (its own transaction "
          "beside the daemon's writer) instead of asking a running sidecar")
_TABLE = "key, version, updated, the value as compact JSON cut to the terminal width"


def add_parsers(sub: Any) -> None:
    """Add ``kv`` with its sub-commands to the ``kairo-sidecar`` sub-command parsers."""
    top = sub.add_parser("kv", help="the key-value store: get, put, delete, list, watch",
                         description="Read and write the key-value store. Example: "
                                     "kairo-sidecar kv put plugin/weather '{\"enabled\": true}'")
    ops = top.add_subparsers(dest="kv_command", required=True)
    get = ops.add_parser("get", help="print one key's entry",
                         description="Print {key, value, version, updated_at}. Example: "
                                     "kairo-sidecar kv get plugin/weather")
    get.add_argument("key")
    history.add_format_option(get, table="one field per line, the value as compact JSON")
    history.add_connection_options(get, db_help=_READ)
    put = ops.add_parser("put", help="store a value under a key (prints the new version)",
                         description="VALUE is JSON if it parses, else a string. Example: "
                                     "kairo-sidecar kv put plugin/weather '{\"enabled\": true}' "
                                     "--if-version 3")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--if-version", type=int, help="only if the key is at this version "
                     "(0: only if absent); else error 'conflict'")
    history.add_connection_options(put, db_help=_WRITE)
    delete = ops.add_parser("delete", help="delete a key",
                            description="Example: kairo-sidecar kv delete plugin/weather")
    delete.add_argument("key")
    delete.add_argument("--if-version", type=int, help="only if the key is at this version")
    history.add_connection_options(delete, db_help=_WRITE)
    listing = ops.add_parser("list", help="print the entries under a prefix (JSON lines)",
                             description="Every entry whose key starts with PREFIX, in key "
                                         "order. Example: kairo-sidecar kv list plugin/")
    listing.add_argument("prefix", nargs="?", default="")
    listing.add_argument("--limit", type=int, help="entries per request (default 100)")
    history.add_format_option(listing, table=_TABLE)
    history.add_connection_options(listing, db_help=_READ)
    watch = ops.add_parser("watch", help="print the entries under a prefix, then every change",
                           description="Current values, then every change as it is made, until "
                                       "Ctrl-C. Example: kairo-sidecar kv watch plugin/")
    watch.add_argument("prefix", nargs="?", default="")
    watch.add_argument("--max-duration", type=float, help="seconds to watch (default: "
                       "[api] max_duration)")
    history.add_format_option(watch, table="op, " + _TABLE)
    history.add_connection_options(watch, db_help="(not for watch: it needs a running sidecar)")


def _value(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _print(item: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(item) + b"\n")
    sys.stdout.buffer.flush()


def _entry(entry: kv.KvEntry) -> dict[str, Any]:
    return {"key": entry.key, "value": msgspec.Raw((entry.value or "null").encode()),
            "version": entry.version, "updated_at": entry.updated_at}


def _write_local(args: argparse.Namespace, config: Config, write: kv.KvWrite) -> kv.KvEntry:
    from sidecar.storage import kv as store
    from sidecar.storage.transfer import open_for_import

    refuse_owned(compile_projections(config.projections), write.key)
    db = open_for_import(config.database)
    try:
        entry = store.apply_now(db, write, topic_base=config.api.base_topic)
    finally:
        db.close()
    assert entry is not None
    return entry


def cmd_get(args: argparse.Namespace, config: Config) -> int:
    if args.db:
        entry = history.local_reader(args, config).kv_get(kv.check_key(args.key))
        if entry is None:
            raise RequestError("not_found", f"no key {args.key!r}", field="key")
        found: Any = _entry(entry)
    else:
        with history.connected(args, config) as client:
            found = client.kv_get(args.key)
    if args.format == "table":
        render.kv_entry(sys.stdout, found)
    else:
        _print(found)
    return 0


def cmd_put(args: argparse.Namespace, config: Config) -> int:
    value = _value(args.value)
    if args.db:
        write = kv.put_write(args.key, value, if_version=args.if_version,
                             max_bytes=config.kv.max_value_bytes)
        version = _write_local(args, config, write).version
    else:
        with history.connected(args, config) as client:
            version = client.kv_put(args.key, value, if_version=args.if_version)
    _print({"key": args.key, "version": version})
    return 0


def cmd_delete(args: argparse.Namespace, config: Config) -> int:
    if args.db:
        write = kv.KvWrite(op="delete", key=kv.check_key(args.key), if_version=args.if_version)
        version = _write_local(args, config, write).version
    else:
        with history.connected(args, config) as client:
            version = client.kv_delete(args.key, if_version=args.if_version)
    _print({"key": args.key, "version": version, "deleted": True})
    return 0


def _entries_out(fmt: str, *, ops: bool = False) -> Callable[[list[Any]], None]:
    """How a command prints each page of entries: JSON lines, or the rows of one table."""
    if fmt == "table":
        return render.KvTable(sys.stdout, ops=ops).entries

    def lines(entries: list[Any]) -> None:
        for entry in entries:
            _print(entry)

    return lines


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    show = _entries_out(args.format)
    if args.db:
        reader = history.local_reader(args, config)
        after: str | None = None
        while True:
            page = reader.kv_page(prefix=kv.check_prefix(args.prefix), after=after,
                                  limit=args.limit or 100)
            show([_entry(entry) for entry in page.entries])
            if page.next is None:
                return 0
            after = page.next
    with history.connected(args, config) as client:
        for item in client.kv_list(args.prefix, limit=args.limit):
            show([item])
    return 0


def cmd_watch(args: argparse.Namespace, config: Config) -> int:
    if args.db:
        raise UsageError("needs a running sidecar (leave out --db)", option="--db")
    options = {} if args.max_duration is None else {"max_duration": args.max_duration}
    show = _entries_out(args.format, ops=True)
    with history.connected(args, config) as client:
        stream = client.kv_watch(args.prefix, **options)
        messages = stream.messages()
        try:
            for message in messages:
                items = [*message.get("entries", ()), *message.get("changes", ())]
                if items:
                    show(items)
                if message.get("caught_up"):
                    print(f"caught up at seq {message.get('last')}; watching (Ctrl-C stops)",
                          file=sys.stderr)
        finally:
            messages.close()
    return 0


_OPS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "get": cmd_get, "put": cmd_put, "delete": cmd_delete, "list": cmd_list, "watch": cmd_watch,
}


def cmd_kv(args: argparse.Namespace, config: Config) -> int:
    return _OPS[args.kv_command](args, config)


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {"kv": cmd_kv}
