"""Group commit: make the commits since the last sync durable with one ``fdatasync``.

With ``synchronous = NORMAL`` a WAL commit writes its frames to the ``-wal`` file without
syncing it; a power cut can then roll those commits back. ``JournalSync.sync()`` makes every
commit made so far durable at once: the writer commits batches without a sync and calls it
before it releases (PUBACKs) the acks of all the batches committed since the last call.

``fsync``/``fdatasync`` flush a file's dirty pages whatever descriptor wrote them, so the sync
goes through a read-only descriptor the sidecar opens itself on the journal file. The file can
be truncated (a TRUNCATE checkpoint, ``journal_size_limit``: same inode, still the right
descriptor) or deleted and created again (journal mode changed, last connection closed: a new
inode, so the descriptor is reopened, and the directory synced once so the new file's name
survives a power cut, as SQLite does for a WAL it creates). Checkpoints need nothing from us:
in NORMAL mode SQLite syncs the WAL before copying it into the database, and the database
after (verified with strace, README "Durability").

Without WAL (a file system where WAL is unavailable), a commit writes the database file and
finishes by deleting, truncating or zeroing the rollback journal: the sync then covers the
database file, the journal if present, and the directory (the journal's removal).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sidecar.logs import get_logger
from sidecar.storage import dialect as dialects

log = get_logger("sidecar.durability")


class _FileHandle:
    """A read-only descriptor on ``path`` that follows the file if it is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None

    def sync(self) -> tuple[bool, bool]:
        """``fdatasync`` the file now at ``path``: (synced, newly opened). (False, False) when
        there is no such file."""
        opened = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            return False, False
        if self._fd is None or self._ino != (st.st_dev, st.st_ino):
            self.close()
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False, False
            fst = os.fstat(fd)
            self._fd, self._ino, opened = fd, (fst.st_dev, fst.st_ino), True
        os.fdatasync(self._fd)
        return True, opened

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = self._ino = None


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir_quietly(path: Path) -> None:
    """fsync the directory ``path`` (so a file created, renamed or removed in it survives a
    power cut), ignoring errors: for copies and records whose loss only costs a retry or a
    check (backups, encrypted copies, the clean-stop record)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class JournalSync:
    """One ``sync()`` makes every transaction committed so far on ``db_path`` durable.

    ``wal`` says whether the database runs in WAL mode (``PRAGMA journal_mode``). Errors are
    raised: after a failed ``fsync`` the kernel may have dropped the dirty pages, so a retry
    that succeeds proves nothing, and the caller must not ack (the writer stops; the broker
    keeps the messages).
    """

    def __init__(self, db_path: str | Path, *, wal: bool = True) -> None:
        self.db_path = Path(db_path)
        self.wal = wal
        self._directory = self.db_path.parent
        self._db = _FileHandle(self.db_path)
        self._wal = _FileHandle(Path(f"{self.db_path}-wal"))
        self._journal = _FileHandle(Path(f"{self.db_path}-journal"))
        self.syncs = 0
        self.seconds = 0.0

    def sync(self) -> None:
        started = time.perf_counter()
        if self.wal:
            synced, opened = self._wal.sync()
            if opened:
                _sync_directory(self._directory)  # a new WAL's name must survive a power cut too
            if not synced:  # no WAL: folded into the database (SQLite synced it) and removed
                self._db.sync()
        else:
            self._db.sync()
            self._journal.sync()
            _sync_directory(self._directory)  # a deleted journal stays deleted
        self.syncs += 1
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self._db.close()
        self._wal.close()
        self._journal.close()


def journal_sync_for(db: object, *, durability: str) -> JournalSync | None:
    """The group commit's sync for the open Peewee database ``db`` when ``durability`` (the
    effective ``[database] durability``) is ``group``; None otherwise (acks follow commits)."""
    if durability != "group" or not dialects.of(db).files:
        return None  # PostgreSQL: a COMMIT (synchronous_commit = on) is durable when it returns
    path = str(getattr(db, "database", ""))
    if not path or path == ":memory:":
        return None
    mode = str(db.execute_sql("PRAGMA journal_mode").fetchone()[0]).lower()  # type: ignore[attr-defined]
    if mode != "wal":
        log.warning("journal_not_wal", journal_mode=mode,
                    hint="group commit syncs the database file and the rollback journal instead")
    return JournalSync(path, wal=mode == "wal")
