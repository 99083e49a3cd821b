"""Encrypting, decrypting and re-keying a database file; writing a new key (``keygen``).

``encrypt SRC DEST`` and ``decrypt SRC DEST`` copy with SQLCipher's ``sqlcipher_export`` from
``SRC`` attached read-only (``mode=ro``: never modified, not even a checkpoint, so they run
beside the daemon like ``backup``) into a new file, checked, synced and renamed to ``DEST``.
``rekey`` needs the database to itself: it refuses while another process (the daemon, a
reader) has it open, then copies it under the new key and renames the copy over it; a crash
leaves either the old file (old key) or the new one (new key), never a mix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sidecar.errors import DatabaseBusyError, StorageError, UsageError
from sidecar.logs import get_logger
from sidecar.storage import cipher
from sidecar.storage.cipher import DATABASE_ERRORS, DatabaseKey
from sidecar.storage.durability import sync_dir_quietly
from sidecar.storage.sqlite_errors import is_busy

log = get_logger("sidecar.encryption")



@dataclass
class CopyResult:
    dest: Path
    bytes: int
    events: int
    seconds: float


def keygen(path: Path | None) -> str | None:
    """Write a new key (64 hex digits and a newline) to ``path``, created with mode 0600 and
    synced; an existing file is never overwritten. ``path=None``: return the key instead."""
    key = cipher.generate_key()
    if path is None:
        return key
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists: keygen never overwrites a key (the database "
                         "it opens could not be read again); choose a new name", option="PATH") from None
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}", path=str(path)) from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_dir_quietly(path.parent)
    log.info("key_written", path=str(path))  # the path, never the key
    return None


def encrypt(src: Path, dest: Path, key: DatabaseKey) -> CopyResult:
    """An encrypted copy (``key``) of the plain database ``src``."""
    return _copy(src, None, dest, key, what="encrypt")


def decrypt(src: Path, dest: Path, key: DatabaseKey) -> CopyResult:
    """A plain copy of the database ``src`` encrypted with ``key``."""
    return _copy(src, key, dest, None, what="decrypt")


def rekey(path: Path, old: DatabaseKey, new: DatabaseKey) -> CopyResult:
    """Encrypt ``path`` with ``new`` instead of ``old``, refusing while another process has it
    open (``DatabaseBusyError``, exit 7). Past that check the file is switched out of WAL mode
    (the daemon switches it back at its next start) and replaced only by a checked copy."""
    cipher.check_header(path, old)
    if not path.is_file():
        raise StorageError(f"database {path} does not exist", path=str(path))
    if new.hex == old.hex:
        raise UsageError("the new key is the key the database already has", option="--new-key-file")
    lock = cipher.connect(path, key=old, timeout=0)
    try:
        in_use = DatabaseBusyError(
            f"database {path} is open in another process (the daemon, or a command beside it): "
            "stop it first (systemctl stop kairo-sidecar), then rekey; it was left untouched",
            path=str(path))
        try:
            # Leaving WAL needs the only connection: fails (SQLITE_BUSY) while the daemon, a
            # reader or a command has the file open; else it folds the WAL into the file.
            mode = lock.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
            lock.execute("BEGIN IMMEDIATE")  # no writer until the copy is in place
        except DATABASE_ERRORS as exc:
            if is_busy(exc):
                raise in_use from None
            raise
        if str(mode).lower() != "delete":
            raise in_use
        # leaving WAL folded the WAL into the file and removed it: none of the old key is left
        # to be replayed into the new file
        if Path(f"{path}-wal").exists():
            raise StorageError(f"{path}-wal is still there after leaving WAL mode; rekey "
                               "stopped before changing anything", path=str(path))
        return _copy(path, old, path, new, what="rekey")
    finally:
        lock.close()


def _copy(src: Path, src_key: DatabaseKey | None, dest: Path, dest_key: DatabaseKey | None,
          *, what: str) -> CopyResult:
    started = time.monotonic()
    if not src.is_file():
        raise StorageError(f"database {src} does not exist", path=str(src))
    cipher.check_header(src, src_key)
    if what != "rekey":
        if dest.exists() or Path(f"{dest}-wal").exists():
            raise UsageError(f"{dest} already exists: {what} writes a new file (the source is "
                             "never changed); choose another name", option="DEST")
        if dest.resolve() == src.resolve():
            raise UsageError(f"{what} needs a new file as DEST", option="DEST")
    partial = dest.with_name(f".{dest.name}.{what}-{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        con = cipher.connect(f"file:{quote(str(partial.resolve()))}?mode=rwc", uri=True,
                             key=dest_key, sqlcipher=True, name=str(dest))
        try:
            _attach_source(con, src, src_key)
            con.execute("PRAGMA main.auto_vacuum = INCREMENTAL")  # as a file the daemon made
            con.execute("SELECT sqlcipher_export('main', 'src')").fetchall()
            con.execute("DETACH DATABASE src")
        finally:
            con.close()
        events = _verify(partial, dest_key, dest)
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, dest)
        sync_dir_quietly(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        Path(f"{partial}-journal").unlink(missing_ok=True)
        raise
    result = CopyResult(dest, dest.stat().st_size, events, round(time.monotonic() - started, 2))
    log.info(f"{what}_finished", src=str(src), dest=str(dest), bytes=result.bytes,
             events=events, seconds=result.seconds)
    return result


def _attach_source(con: Any, src: Path, key: DatabaseKey | None) -> None:
    """Attach ``src`` read-only as ``src`` with its key (``''``: plain) and read its schema."""
    try:
        con.execute("ATTACH DATABASE ? AS src KEY ?",
                    (f"file:{quote(str(src.resolve()))}?mode=ro", f"x'{key.hex}'" if key else ""))
        con.execute("SELECT count(*) FROM src.sqlite_master").fetchone()
    except DATABASE_ERRORS as exc:
        if cipher.is_not_a_database(exc):
            raise cipher.wrong_key(str(src), key) from None
        raise


def _verify(partial: Path, key: DatabaseKey | None, dest: Path) -> int:
    """Reopen the copy (its schema fresh) with its key: quick_check, and its event count."""
    con = cipher.connect(partial, key=key, sqlcipher=True, name=str(dest))
    try:
        problems = con.execute("PRAGMA quick_check").fetchall()
        if problems != [("ok",)]:
            raise StorageError(f"the copy failed its check: {problems[:3]}", path=str(dest))
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return con.execute("SELECT count(*) FROM events").fetchone()[0] if "events" in tables else 0
    finally:
        con.close()
