"""Online backup: SQLite's backup API in steps (for the progress bar) inside ONE read
transaction on the source, so the copy is a consistent snapshot and never restarts however
fast the daemon writes (WAL). Written to a temporary file, checked, then renamed into place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import DatabaseConfig
from sidecar.errors import DestinationExistsError, NotApplicableError, StorageError, UsageError
from sidecar.logs import get_logger
from sidecar.storage import cipher
from sidecar.storage.db import check_is_sqlite, is_sqlite, sqlite_path
from sidecar.storage.dialect import masked_url
from sidecar.storage.durability import sync_dir_quietly
from sidecar.storage.integrity import open_readonly
from sidecar.storage.sqlite_errors import retry_busy

log = get_logger("sidecar.backup")

ProgressFn = Callable[[int, int], None]  # (done, total)


# ------------------------------------------------------------------------------------ backup
@dataclass
class BackupResult:
    dest: Path
    bytes: int
    pages: int
    events: int
    seconds: float


def backup(config: DatabaseConfig, dest: Path, *, force: bool = False, step_pages: int = 1024,
           progress: ProgressFn | None = None) -> BackupResult:
    """Copy the database of ``config`` to ``dest`` while the daemon keeps writing."""
    if not is_sqlite(config):
        raise NotApplicableError(
            f"backup copies an SQLite file; {masked_url(config.url)} is a PostgreSQL database: "
            "use pg_dump (pg_dump -Fc -f kairo.dump DATABASE) or your server's backups",
            command="backup")
    src = sqlite_path(config.url)
    key = cipher.database_key(config)
    check_is_sqlite(src, key)
    if not src.is_file():
        raise StorageError(f"database {src} does not exist", path=str(src))
    if dest.exists() and not force:
        raise DestinationExistsError(str(dest))
    if dest.exists() and dest.resolve() == src.resolve():
        raise UsageError("the backup must go to another file than the database", option="DEST")
    started = time.monotonic()
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    source = open_readonly(src, timeout=config.busy_timeout_ms / 1000, key=key)
    try:
        def snapshot() -> None:  # pin one snapshot for every step of the copy
            source.execute("BEGIN")
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()

        retry_busy(snapshot, what="start the backup", path=str(src))
        target = cipher.connect(partial, key=key)  # an encrypted database's copy: same key
        try:
            pages = 0

            def step(status: int, remaining: int, total: int) -> None:
                nonlocal pages
                pages = total
                if progress is not None:
                    progress(total - remaining, total)

            source.backup(target, pages=step_pages, progress=step)
            source.execute("COMMIT")
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            problems = target.execute("PRAGMA quick_check").fetchall()
            if problems != [("ok",)]:
                raise StorageError(f"the backup copy failed its check: {problems[:3]}",
                                   path=str(dest))
            events = target.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            target.close()
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, dest)
        sync_dir_quietly(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    result = BackupResult(dest, dest.stat().st_size, pages, events,
                          round(time.monotonic() - started, 2))
    log.info("backup_finished", dest=str(dest), bytes=result.bytes, events=events,
             seconds=result.seconds)
    return result
