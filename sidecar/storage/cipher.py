"""Encryption at rest: the database key, and SQLite connections that apply it (SQLCipher).

Every SQLite connection the sidecar opens goes through ``connect`` (raw connections: checks,
recover, backup, encrypt/decrypt) or ``db.sqlite_database`` (Peewee: the writer, readers,
commands), and both come here for the key. With no key they are Python's ``sqlite3``; with one
they are ``sqlcipher3`` (the ``kairo-sidecar[encryption]`` extra) keyed before the first read.

The key is 32 random bytes written as 64 hex digits (``kairo-sidecar keygen``), applied as a raw
key (``PRAGMA key = "x'...'"``): no passphrase derivation, so opening a connection costs what it
costs unencrypted. It comes from ``[database] key_file`` (mode 0600 or stricter, or in a
directory only its owner can enter; owned by this user or root), the systemd credential
``database-key`` (``load_config`` turns it into a ``key_file``) or
``KAIRO_SIDECAR_DATABASE__KEY``. It is never logged.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from pathlib import Path
from types import ModuleType
from typing import Any

import peewee

from sidecar.config import DatabaseConfig
from sidecar.errors import ConfigError, EncryptionKeyError, StorageError

SQLITE_HEADER = b"SQLite format 3\x00"
KEY_SOURCES = ("[database] key_file, the systemd credential database-key, or "
               "KAIRO_SIDECAR_DATABASE__KEY")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")

_sqlcipher: ModuleType | None
try:  # the kairo-sidecar[encryption] extra
    from sqlcipher3 import dbapi2 as _sqlcipher
except ImportError:  # pragma: no cover - depends on the install
    _sqlcipher = None

# The errors of either driver (sqlcipher3's classes are its own, not sqlite3's subclasses).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    (sqlite3.DatabaseError,) if _sqlcipher is None else (sqlite3.DatabaseError, _sqlcipher.DatabaseError))
OPERATIONAL_ERRORS: tuple[type[Exception], ...] = (
    (sqlite3.OperationalError,) if _sqlcipher is None
    else (sqlite3.OperationalError, _sqlcipher.OperationalError))
# ... and with Peewee's (which wraps them), for the places that see both
ANY_DATABASE_ERRORS: tuple[type[Exception], ...] = (peewee.DatabaseError, *DATABASE_ERRORS)
ANY_OPERATIONAL_ERRORS: tuple[type[Exception], ...] = (peewee.OperationalError, *OPERATIONAL_ERRORS)


def available() -> bool:
    """Whether SQLCipher can be imported (the ``encryption`` extra is installed)."""
    return _sqlcipher is not None


def driver() -> ModuleType:
    """``sqlcipher3.dbapi2``, or a ``StorageError`` saying how to install it."""
    if _sqlcipher is None:
        raise StorageError("an encryption key is configured but SQLCipher is not installed: "
                           "pip install -c constraints.txt 'kairo-sidecar[encryption]'")
    return _sqlcipher


# ---------------------------------------------------------------------------------- keys
class DatabaseKey:
    """The 64 hex digits of a key; its repr never shows them."""

    __slots__ = ("hex", "source")

    def __init__(self, hex_digits: str, *, source: str) -> None:
        self.hex = hex_digits.lower()
        self.source = source  # where it came from, for messages: a file name or a variable

    def __repr__(self) -> str:
        return f"DatabaseKey(source={self.source!r})"

    @property
    def pragma(self) -> str:
        return f"PRAGMA key = \"x'{self.hex}'\""


def parse_key(text: str, *, source: str, key: str) -> DatabaseKey:
    """64 hex digits (surrounding white space ignored) -> a key; else a ``ConfigError`` naming
    ``key`` and ``source`` (never echoing what was read)."""
    digits = text.strip()
    if not _HEX_KEY.fullmatch(digits):
        raise ConfigError(f"must hold 64 hex digits (32 bytes; `kairo-sidecar keygen` writes "
                          f"one), found {len(digits)} characters that are not", source=source, key=key)
    return DatabaseKey(digits, source=source)


def read_key_file(path: Path) -> DatabaseKey:
    """The key in ``path``, refused unless only its owner (this user, or root) can read it."""
    name = "database.key_file"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path), key=name) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path), key=name) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("is not a regular file", source=str(path), key=name)
    if info.st_mode & 0o077 and not _private_directory(path.parent):
        raise ConfigError(f"mode {stat.S_IMODE(info.st_mode):04o} lets other users read the key: "
                          f"chmod 600 {path}", source=str(path), key=name)
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"is owned by uid {info.st_uid}, not by this user ({os.geteuid()}) or "
                          f"root: chown it", source=str(path), key=name)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path), key=name) from None
    return parse_key(text, source=str(path), key=name)


def _private_directory(directory: Path) -> bool:
    """A directory only its owner (this user or root) can enter, such as systemd's
    ``$CREDENTIALS_DIRECTORY`` (whose files may show group bits through an ACL mask)."""
    try:
        info = directory.stat()
    except OSError:
        return False
    return not info.st_mode & 0o077 and info.st_uid in (os.geteuid(), 0)


def database_key(config: DatabaseConfig) -> DatabaseKey | None:
    """The key of ``config`` (``None``: the file is not encrypted). ``load_config`` has already
    refused two sources at once and a key with a PostgreSQL URL."""
    if config.key is not None:
        return parse_key(config.key, source="environment variable KAIRO_SIDECAR_DATABASE__KEY",
                         key="database.key")
    if config.key_file:
        return read_key_file(Path(config.key_file))
    return None


def generate_key() -> str:
    """A new key: 32 random bytes as 64 hex digits."""
    return os.urandom(32).hex()


# ---------------------------------------------------------------------------- connections
def looks_encrypted(path: Path) -> bool:
    """A file that is not a plain SQLite file but has the shape of an SQLCipher one: whole
    pages (a multiple of 512 bytes) starting with a random salt instead of the SQLite header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError:
        return False
    return size >= 512 and size % 512 == 0 and head != SQLITE_HEADER


def check_header(path: Path, key: DatabaseKey | None) -> None:
    """Refuse, without touching it, a file whose first bytes do not fit the key (or its absence):
    a plain file with a key configured, an encrypted one without, or one that is neither."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with path.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StorageError(f"cannot read database {path}: {exc.strerror}", path=str(path)) from None
    if header == SQLITE_HEADER:
        if key is not None:
            raise EncryptionKeyError(
                f"{path} is a plain (unencrypted) SQLite file, but a key is configured "
                f"({key.source}); it was left untouched. Encrypt it with `kairo-sidecar encrypt "
                f"{path} NEW.db` and point [database] url at NEW.db, or remove the key",
                path=str(path))
        return
    if key is None:
        if looks_encrypted(path):
            raise EncryptionKeyError(
                f"{path} looks encrypted (it does not start with the SQLite header) and no key is "
                f"configured: give its key ({KEY_SOURCES}); it was left untouched",
                path=str(path))
        raise StorageError(
            f"{path} is not an SQLite database; it was left untouched. Point [database] url at "
            "another file, or move this one away yourself if it is not needed",
            path=str(path))


def is_not_a_database(exc: BaseException) -> bool:
    """SQLITE_NOTADB from either driver (what a wrong key, or no key, looks like)."""
    return getattr(exc, "sqlite_errorname", None) == "SQLITE_NOTADB" or "not a database" in str(exc)


def wrong_key(path: str, key: DatabaseKey | None) -> StorageError:
    """The error for a file SQLite cannot read with ``key`` (or without one): without a key, a
    file that does not look encrypted is just not a database (exit 3). Reading its first bytes
    here is safe: no connection of this process can hold a lock on a file SQLite cannot read."""
    if key is None and not looks_encrypted(Path(path)):
        return StorageError(f"{path} is not an SQLite database; it was left untouched", path=path)
    if key is None:
        return EncryptionKeyError(
            f"{path} cannot be read without a key: it is not a plain SQLite file (it looks "
            f"encrypted): give its key ({KEY_SOURCES}); it was left untouched", path=path)
    return EncryptionKeyError(
        f"the key ({key.source}) does not open {path}: a wrong key, or the file is not an "
        "encrypted kairo-sidecar database; it was left untouched", path=path)


def apply_key(con: Any, key: DatabaseKey, path: str) -> None:
    """Key a fresh SQLCipher connection and prove it reads page 1 (raise ``EncryptionKeyError``
    if not), before anything else touches the file."""
    con.execute("PRAGMA cipher_log_level = NONE")  # its own stderr lines on a wrong key
    con.execute(key.pragma)
    probe(con, path, key)


def probe(con: Any, path: str, key: DatabaseKey | None) -> None:
    """Read the schema once: a wrong or missing key fails here, with our words."""
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except DATABASE_ERRORS as exc:
        if is_not_a_database(exc):
            raise wrong_key(path, key) from None
        raise


def connect(target: str | Path, *, key: DatabaseKey | None, uri: bool = False,
            timeout: float = 5.0, check_same_thread: bool = True, name: str | None = None,
            sqlcipher: bool = False) -> Any:
    """An ``isolation_level=None`` connection to ``target`` (a path, or a ``file:`` URI with
    ``uri=True``): ``sqlite3`` without a key, SQLCipher keyed and probed with one (or, with
    ``sqlcipher``, SQLCipher reading a plain file). ``name`` is the file for messages."""
    shown = name or str(target)
    if key is None and not sqlcipher:
        con = sqlite3.connect(target, uri=uri, timeout=timeout, isolation_level=None,
                              check_same_thread=check_same_thread)
        try:
            probe(con, shown, None)
        except BaseException:
            con.close()
            raise
        return con
    con = driver().connect(str(target), uri=uri, timeout=timeout, isolation_level=None,
                           check_same_thread=check_same_thread)
    try:
        con.execute("PRAGMA cipher_log_level = NONE")
        if key is not None:
            apply_key(con, key, shown)
        else:
            probe(con, shown, None)
    except BaseException:
        con.close()
        raise
    return con
