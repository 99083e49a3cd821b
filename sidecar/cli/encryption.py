"""Encryption at rest commands: keygen, encrypt, decrypt, rekey (thin adapters over
``storage.encryption``; README "Encryption at rest")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.cli import args as cliargs
from sidecar.config import Config
from sidecar.core.units import format_size
from sidecar.errors import NotApplicableError, UsageError

if TYPE_CHECKING:
    from sidecar.storage.cipher import DatabaseKey


def add_parsers(sub: Any) -> None:
    """Add keygen, encrypt, decrypt and rekey to the CLI's subparsers."""
    p = sub.add_parser("keygen", help="write a new database key (32 random bytes, hex)",
                       description="Write a new key to PATH (mode 0600; an existing file is never "
                                   "overwritten), or print it. Example: kairo-sidecar keygen "
                                   "/etc/kairo/db.key")
    p.add_argument("path", nargs="?", metavar="PATH", help="key file to create (default: print)")

    p = sub.add_parser("encrypt", help="an encrypted copy of a plain database",
                       description="Copy the plain database SRC into the new file DEST encrypted "
                                   "with the configured key (SRC is never changed; safe while the "
                                   "daemon runs). Example: kairo-sidecar encrypt data/kairo.db "
                                   "data/kairo-enc.db --key-file /etc/kairo/db.key")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    cliargs.add_config_option(p)

    p = sub.add_parser("decrypt", help="a plain copy of an encrypted database",
                       description="Copy the encrypted database SRC (opened with the configured "
                                   "key) into the new, plain file DEST (SRC is never changed). "
                                   "Example: kairo-sidecar decrypt data/kairo.db plain.db "
                                   "--key-file /etc/kairo/db.key")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    cliargs.add_config_option(p)

    p = sub.add_parser("rekey", help="encrypt the database with a new key (daemon stopped)",
                       description="Re-encrypt the database with the key in --new-key-file, then "
                                   "point [database] key_file at it. Refused while the daemon (or "
                                   "any process) has the file open. Example: kairo-sidecar rekey "
                                   "--new-key-file /etc/kairo/db.key.new")
    p.add_argument("--new-key-file", metavar="PATH", required=True,
                   help="the new key (kairo-sidecar keygen PATH)")
    cliargs.add_database_options(p)


def _key(config: Config, command: str) -> DatabaseKey:
    from sidecar.storage.cipher import KEY_SOURCES, database_key, driver

    driver()
    key = database_key(config.database)
    if key is None:
        raise UsageError(f"{command} needs the database key: --key-file PATH, or {KEY_SOURCES}",
                         option="--key-file")
    return key


def cmd_keygen(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.encryption import keygen

    key = keygen(Path(args.path) if args.path else None)
    if key is not None:
        print(key)
    else:
        print(f"wrote a new key to {args.path} (mode 0600); keep a copy apart from the database: "
              "without it the database cannot be read", file=sys.stderr)
    return 0


def cmd_encrypt(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.encryption import encrypt

    result = encrypt(Path(args.src), Path(args.dest), _key(config, "encrypt"))
    print(f"encrypted {args.src} -> {result.dest}: {format_size(result.bytes)}, {result.events} "
          f"events, {result.seconds}s")
    return 0


def cmd_decrypt(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.encryption import decrypt

    result = decrypt(Path(args.src), Path(args.dest), _key(config, "decrypt"))
    print(f"decrypted {args.src} -> {result.dest}: {format_size(result.bytes)}, {result.events} "
          f"events, {result.seconds}s (the copy is NOT encrypted)")
    return 0


def cmd_rekey(args: argparse.Namespace, config: Config) -> int:
    from sidecar.storage.cipher import read_key_file
    from sidecar.storage.db import is_sqlite, sqlite_path
    from sidecar.storage.encryption import rekey

    if not is_sqlite(config.database):
        raise NotApplicableError("rekey works on an encrypted SQLite file; encryption at rest "
                                 "does not apply to PostgreSQL", command="rekey")
    old = _key(config, "rekey")
    new = read_key_file(Path(args.new_key_file))
    path = sqlite_path(config.database.url)
    result = rekey(path, old, new)
    print(f"rekeyed {result.dest}: {format_size(result.bytes)}, {result.events} events, "
          f"{result.seconds}s; now point [database] key_file at {args.new_key_file}")
    return 0


COMMANDS = {"keygen": cmd_keygen, "encrypt": cmd_encrypt, "decrypt": cmd_decrypt,
            "rekey": cmd_rekey}
