"""Start-up checks, `check` and `recover`: a non-database file and a damaged page both stop the
daemon with a clear error and a distinct exit code, the file left byte for byte as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.errors import CorruptDatabaseError, StorageError
from sidecar.integrity import problems, recover, verify_on_start
from tests.conftest import ROOT
from tests.seed import create_db, damage_page_holding, event, query, sha256

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
    only the rows of the damaged page are missing, the rest are identical (seq kept), and
    the damaged file is unchanged."""
    original = tmp_path / "original.db"
    create_db(original, ROWS)  # the same rows, undamaged, to compare
    before = sha256(damaged)
    dest = tmp_path / "recovered.db"
    result = run_cli("recover", str(damaged), str(dest), db=damaged)
    assert result.returncode == 0, result.stderr
    assert "passes integrity_check" in result.stdout and "unreadable rowids" in result.stdout
    assert sha256(damaged) == before
    assert query(dest, "PRAGMA integrity_check") == [("ok",)]
    recovered = query(dest, "SELECT * FROM events ORDER BY seq")
    all_rows = {row[0]: row for row in query(original, "SELECT * FROM events")}
    assert N - 40 < len(recovered) < N  # one page of ~150-byte rows is lost, nothing else
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
