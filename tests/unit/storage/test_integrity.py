"""Start-up checks, `check` and `recover`: a non-database file and a damaged page both stop the
daemon with a clear error and a distinct exit code, the file left byte for byte as it was."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.errors import CorruptDatabaseError, StorageError
from sidecar.storage.integrity import cached_fraction, problems, recover, verify_on_start
from tests.conftest import ROOT
from tests.support.seed import create_db, damage_page_holding, event, query, sha256

N = 3000
ROWS = [event(i) for i in range(N)]  # one set of rows (same timestamps) for every copy


def run_cli(*args: str, db: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db}",
               "KAIRO_SIDECAR_MQTT__PORT": "1",  # never reached: start-up stops before MQTT
               "KAIRO_SIDECAR_LOG__FORMAT": "json", **env}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env=environ,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A database with N events, one table page (holding event 1500) overwritten."""
    path = create_db(tmp_path / "kairo.db", ROWS)
    damage_page_holding(path, b"row-e-0001500-end")
    return path


def test_non_database_file_refuses_to_start_untouched(tmp_path: Path) -> None:
    """A file that is not SQLite: exit 3, the message names the file, the file is unchanged."""
    path = tmp_path / "kairo.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    before = sha256(path)
    result = run_cli("run", db=path)
    assert result.returncode == 3, result.stderr
    assert str(path) in result.stderr and "not an SQLite database" in result.stderr
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kairo.db"]  # nothing created beside it


def test_damaged_page_refuses_to_start_untouched(damaged: Path) -> None:
    """A damaged page: exit 6, the message names the file and says to run check and recover,
    and the file is byte for byte unchanged (never moved aside, never rewritten)."""
    before = sha256(damaged)
    result = run_cli("run", db=damaged)
    assert result.returncode == 6, result.stderr
    assert str(damaged) in result.stderr
    assert "kairo-sidecar recover" in result.stderr and "left untouched" in result.stderr
    assert sha256(damaged) == before
    assert damaged.exists()


def test_damaged_database_refuses_migrate_too(damaged: Path) -> None:
    """`migrate` runs the same check and refuses with exit 6."""
    before = sha256(damaged)
    assert run_cli("migrate", db=damaged).returncode == 6
    assert sha256(damaged) == before


def test_start_up_check_modes(damaged: Path) -> None:
    """quick and full both find the damage; off skips the check."""
    with pytest.raises(CorruptDatabaseError) as info:
        verify_on_start(damaged, "quick")
    assert info.value.exit_code == 6 and info.value.path == str(damaged)
    with pytest.raises(CorruptDatabaseError):
        verify_on_start(damaged, "full")
    verify_on_start(damaged, "off")


def test_sound_database_passes(tmp_path: Path) -> None:
    """A healthy file has no problems in either check."""
    path = create_db(tmp_path / "k.db", [event(i) for i in range(100)])
    assert problems(path) == [] and problems(path, full=True) == []


def test_check_command_summarises_a_sound_database(tmp_path: Path) -> None:
    """`check` runs integrity_check and prints rows, size, WAL and oldest/newest; exit 0."""
    path = create_db(tmp_path / "k.db", [event(i, age_days=i % 3) for i in range(100)])
    result = run_cli("check", db=path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "integrity     ok (integrity_check)" in out
    assert "events        100 (seq 1 .. 100)" in out
    assert "wal " in out and "auto_vacuum incremental" in out and "001_initial" in out


def test_check_command_reports_damage(damaged: Path) -> None:
    """`check` on a damaged file says DAMAGED, lists the problems and exits 6, file unchanged."""
    before = sha256(damaged)
    result = run_cli("check", str(damaged), db=damaged)
    assert result.returncode == 6
    assert "DAMAGED" in result.stdout and "problem" in result.stdout
    assert sha256(damaged) == before


def test_recover_salvages_every_readable_row(damaged: Path, tmp_path: Path) -> None:
    """`recover` copies every row it can read into a new file that passes integrity_check;
    only the rows of the damaged page are missing (and counted as lost: exit 8), the rest are
    identical (seq kept), and the damaged file is unchanged."""
    original = tmp_path / "original.db"
    create_db(original, ROWS)  # the same rows, undamaged, to compare
    before = sha256(damaged)
    dest = tmp_path / "recovered.db"
    result = run_cli("recover", str(damaged), str(dest), db=damaged)
    assert result.returncode == 8, result.stderr
    assert "passes integrity_check" in result.stdout and "unreadable rowids" in result.stdout
    assert sha256(damaged) == before
    assert query(dest, "PRAGMA integrity_check") == [("ok",)]
    recovered = query(dest, "SELECT * FROM events ORDER BY seq")
    all_rows = {row[0]: row for row in query(original, "SELECT * FROM events")}
    assert N - 40 < len(recovered) < N  # one page of ~150-byte rows is lost, nothing else
    assert f"lost {N - len(recovered)} (" in result.stdout
    assert all(all_rows[row[0]] == row for row in recovered)  # every column, seq included
    assert "row-e-0001500-end" not in {row[5][9:26] for row in recovered}
    assert query(dest, "SELECT seq FROM sqlite_sequence WHERE name = 'events'") == [(N,)]


def test_recover_refuses_to_overwrite(damaged: Path, tmp_path: Path) -> None:
    """DEST must be a new file: an existing one, or the source itself, is refused."""
    other = create_db(tmp_path / "other.db")
    with pytest.raises(StorageError, match="already exists"):
        recover(damaged, other)
    with pytest.raises(StorageError):
        recover(damaged, damaged)


def destroy_root_page(path: Path, table: str) -> int:
    """Overwrite the root page of ``table`` (from sqlite_master) with garbage; return its number."""
    root = query(path, "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?",
                 table)[0][0]
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert root > 1, "never damage the header page in these tests"
    data[(root - 1) * page_size:root * page_size] = b"\x5a" * page_size  # rootpage is 1-based
    path.write_bytes(bytes(data))
    return int(root)


def recovered_line(stdout: str, table: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(f"{table} "))


def test_recover_says_it_lost_every_event_when_the_root_page_is_destroyed(tmp_path: Path) -> None:
    """With the events root page destroyed no event can be read: recover says it expected N
    (from an index, which still holds every row's rowid), lost N, and exits 8, not 0."""
    path = create_db(tmp_path / "kairo.db", ROWS)
    destroy_root_page(path, "events")
    before = sha256(path)
    dest = tmp_path / "recovered.db"
    result = run_cli("recover", str(path), str(dest), db=path)
    assert result.returncode == 8, result.stdout + result.stderr
    line = recovered_line(result.stdout, "events")
    assert f"recovered 0 of {N} expected, lost {N} (entries in index " in line, line
    assert f"lost {N} rows (events {N})" in result.stderr and "Traceback" not in result.stderr
    assert query(dest, "SELECT count(*) FROM events") == [(0,)]
    assert query(dest, "SELECT seq FROM sqlite_sequence WHERE name = 'events'") == [(N,)]
    assert "recovered 0 of 0 expected, lost 0" in recovered_line(result.stdout, "dead_letters")
    assert sha256(path) == before


def test_recover_reports_a_partial_loss(tmp_path: Path) -> None:
    """Three damaged leaf pages of events: recover names the exact number it expected (N) and
    the number it lost, which is N minus the rows in DEST, and exits 8."""
    path = create_db(tmp_path / "kairo.db", ROWS)
    for i in (200, 1500, 2800):
        damage_page_holding(path, f"row-e-{i:07d}-end".encode())
    dest = tmp_path / "recovered.db"
    result = run_cli("recover", str(path), str(dest), db=path)
    assert result.returncode == 8, result.stdout + result.stderr
    kept = query(dest, "SELECT count(*) FROM events")[0][0]
    lost = N - kept
    assert 3 <= lost < 120  # three pages of ~150-byte rows, nothing else
    line = recovered_line(result.stdout, "events")
    assert f"recovered {kept} of {N} expected, lost {lost} " in line, line
    assert "unreadable rowids" in line
    assert f"recover lost {lost} rows (events {lost})" in result.stderr


def test_recover_of_a_sound_file_loses_nothing(tmp_path: Path) -> None:
    """An undamaged file: every table reports lost 0, exit 0, and DEST holds every row."""
    path = create_db(tmp_path / "kairo.db", ROWS[:500])
    dest = tmp_path / "recovered.db"
    result = run_cli("recover", str(path), str(dest), db=path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recovered 500 of 500 expected, lost 0" in recovered_line(result.stdout, "events")
    for table in ("dead_letters", "kv_store", "delivery_ids"):
        assert "lost 0 " in recovered_line(result.stdout, table)
    assert query(dest, "SELECT count(*) FROM events") == [(500,)]


def test_recover_of_a_table_with_no_index_and_no_root_says_lost_unknown(tmp_path: Path) -> None:
    """dead_letters has no index: with its root page destroyed, recover says the table cannot
    be read and gives no made-up count; exit 8 all the same."""
    path = create_db(tmp_path / "kairo.db", ROWS[:10])
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO dead_letters (topic, payload, payload_size, reason, received_at) "
                    "VALUES ('kairo/x', x'00', 1, 'bad', 1)", [()] * 50)
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    destroy_root_page(path, "dead_letters")
    result = run_cli("recover", str(path), str(tmp_path / "r.db"), db=path)
    assert result.returncode == 8, result.stdout + result.stderr
    line = recovered_line(result.stdout, "dead_letters")
    assert "expected, lost unknown" in line and "table unreadable" in line, line
    assert "lost 0 " in recovered_line(result.stdout, "events")
    assert "dead_letters an unknown number" in result.stderr


def _drop(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_start_up_check_leaves_the_file_out_of_the_page_cache(tmp_path: Path) -> None:
    """The check of a file not in the page cache reads every page; afterwards none stays cached
    (in read-ahead's large folios a later 4 KiB page write would count as the whole folio
    written: SD-card wear)."""
    path = create_db(tmp_path / "c.db", [event(i) for i in range(3000)])
    _drop(path)
    assert cached_fraction(path) == 0.0
    problems(path)
    assert cached_fraction(path) > 0.5  # what the check alone leaves
    _drop(path)
    verify_on_start(path, "quick")
    assert cached_fraction(path) == 0.0


def test_start_up_check_keeps_a_cached_file_cached(tmp_path: Path) -> None:
    """A file already in the page cache (a restart) stays there: the next start's check reads
    memory, not the disk (cold start at 1,000,000 events: 0.8 s, not 2.7 s)."""
    path = create_db(tmp_path / "c.db", [event(i) for i in range(3000)])
    path.read_bytes()
    verify_on_start(path, "quick")
    assert cached_fraction(path) == 1.0
