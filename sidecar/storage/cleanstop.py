"""The clean-stop record: lets ``startup_check = "auto"`` skip the whole-file check after a
clean stop, so a restart does not read every page of a multi-GB database from the SD card.

At a clean stop (the writer drained, the WAL folded back into the file by a TRUNCATE
checkpoint, the database closed) the daemon writes ``<db>.clean-stop``: the file's size,
mtime and inode as it left them, and when it was last checked. At the next start the check is
skipped only if all of these hold: the record is there and readable, the file is unchanged
since (same size, mtime and inode: any writer, e.g. ``import`` or ``purge`` run while the daemon
was stopped, or a restored backup, changes them), no WAL with content is beside it, and the last
full-file check is less than ``RECHECK_AFTER`` old. The record is removed (and the removal
synced) before the database is opened for writing, so a crash or power cut afterwards always
leads to a check. This is the rule Home Assistant's recorder follows (check only after an
unclean shutdown); what it cannot catch is a card that corrupts pages while the daemon is
stopped and leaves size and mtime alone: ``kairo-sidecar check`` (or ``startup_check =
"quick"``) covers that.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.logs import get_logger
from sidecar.storage.durability import sync_dir_quietly

log = get_logger("sidecar.cleanstop")

RECHECK_AFTER = 7 * 24 * 3600.0  # seconds: "auto" checks at least this often across restarts
_VERSION = 1


@dataclass(frozen=True)
class CleanStop:
    """What a clean stop left: the database file's identity and the last check's time."""

    size: int
    mtime_ns: int
    inode: int
    stopped_at: float  # unix seconds
    checked_at: float  # unix seconds of the last whole-file check (0: never)


def record_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".clean-stop")


def read(db_path: Path) -> CleanStop | None:
    """The record beside ``db_path``, or None if there is none (or it cannot be read)."""
    try:
        data = json.loads(record_path(db_path).read_text())
        if data.get("version") != _VERSION:
            return None
        return CleanStop(size=int(data["size"]), mtime_ns=int(data["mtime_ns"]),
                         inode=int(data["inode"]), stopped_at=float(data["stopped_at"]),
                         checked_at=float(data["checked_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def why_check(db_path: Path, record: CleanStop | None, *, now: float | None = None) -> str | None:
    """Why ``auto`` must check the file (a short reason for the log), or None to skip it."""
    if record is None:
        return "no_clean_stop"
    try:
        st = db_path.stat()
    except OSError:
        return "no_clean_stop"
    if (st.st_size, st.st_mtime_ns, st.st_ino) != (record.size, record.mtime_ns, record.inode):
        return "changed_since_stop"
    wal = db_path.with_name(db_path.name + "-wal")
    with contextlib.suppress(OSError):
        if wal.stat().st_size > 0:
            return "wal_not_empty"
    now = time.time() if now is None else now
    if now - record.checked_at >= RECHECK_AFTER:
        return "check_due"
    return None


def clear(db_path: Path) -> None:
    """Remove the record and sync the directory (so a power cut cannot bring it back)."""
    path = record_path(db_path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("clean_stop_clear_failed", path=str(path), error=str(exc))
        return
    sync_dir_quietly(path.parent)


def write(db_path: Path, *, checked_at: float) -> None:
    """Record a clean stop of ``db_path`` (called after the database is closed); never raises."""
    path = record_path(db_path)
    try:
        st = db_path.stat()
        data = {"version": _VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino, "stopped_at": time.time(), "checked_at": checked_at}
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        sync_dir_quietly(path.parent)
    except OSError as exc:
        log.warning("clean_stop_record_failed", path=str(path), error=str(exc),
                    hint="the next start runs the integrity check")
