"""``startup_check = "auto"``: the whole-file check is skipped only after a clean stop that
left the file untouched (``storage.cleanstop``), and always runs otherwise."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from sidecar.config import DatabaseConfig
from sidecar.errors import StorageError
from sidecar.storage import cleanstop
from sidecar.storage.integrity import verify_on_start
from sidecar.storage.startup import open_store


def _store(path: Path) -> None:
    open_store(DatabaseConfig(url=f"sqlite:///{path}"), schema="migrate").close()


def _damage_keeping_identity(path: Path) -> None:
    """Overwrite every page after the first in place, then put size and mtime back (what a card
    that rots pages under a stopped daemon would leave)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    with path.open("r+b") as fh:
        fh.seek(page_size)
        fh.write(b"\xff" * (len(data) - page_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_clean_stop_skips_the_check_and_clears_the_record(tmp_path: Path) -> None:
    """After a clean stop the check is skipped (a damaged file with the same size and mtime is
    not read), the record is removed, and the last check's time is carried forward."""
    path = tmp_path / "k.db"
    _store(path)
    cleanstop.write(path, checked_at=time.time() - 60)
    checked = cleanstop.read(path)
    assert checked is not None
    _damage_keeping_identity(path)
    assert verify_on_start(path, "auto") == checked.checked_at  # skipped: not read
    assert not cleanstop.record_path(path).exists()
    with pytest.raises(StorageError) as info:  # now no record: the check runs and refuses
        verify_on_start(path, "auto")
    assert info.value.exit_code == 6


def test_quick_always_checks(tmp_path: Path) -> None:
    """``quick`` reads the file even with a valid clean-stop record."""
    path = tmp_path / "k.db"
    _store(path)
    cleanstop.write(path, checked_at=time.time())
    _damage_keeping_identity(path)
    with pytest.raises(StorageError):
        verify_on_start(path, "quick")


@pytest.mark.parametrize("change", ["write", "wal", "old_check", "garbled", "replaced"])
def test_auto_checks_when_the_stop_was_not_clean_or_the_file_changed(tmp_path: Path,
                                                                     change: str) -> None:
    """A written file, a WAL with frames, a last check over a week old, an unreadable record or
    another file under the same name each make ``auto`` run the check (and refuse damage)."""
    path = tmp_path / "k.db"
    _store(path)
    cleanstop.write(path, checked_at=time.time() - (8 * 86400 if change == "old_check" else 0))
    if change == "write":
        con = sqlite3.connect(path)
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("INSERT INTO kv_store (key, value, updated_at) VALUES ('k', '1', 1)")
        con.commit()
        con.close()
    elif change == "wal":
        path.with_name(path.name + "-wal").write_bytes(b"\0" * 32)
    elif change == "garbled":
        cleanstop.record_path(path).write_text("{not json")
    elif change == "replaced":
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        os.utime(copy, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        os.replace(copy, path)  # same size and mtime, another inode (a restored backup)
    expected = cleanstop.read(path)
    assert cleanstop.why_check(path, expected) is not None
    _damage_keeping_identity(path)
    with pytest.raises(StorageError):
        verify_on_start(path, "auto")
