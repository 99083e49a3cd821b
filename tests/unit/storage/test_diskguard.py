"""The disk guard: the min_free arithmetic and its config key, and, on a real 8 MiB tmpfs holding
a real SQLite file (root only; skipped otherwise), that it deletes the oldest events until the
room is back, counts the file's free pages as room, stops at its floor, does nothing when off,
shows itself in `purge --dry-run` and in the daemon's `stats` answer while ingest goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from sidecar.client import SidecarClient
from sidecar.config import Config, load_config
from sidecar.core.units import parse_free_space
from sidecar.errors import ConfigError
from sidecar.storage.db import open_database
from sidecar.storage.diskguard import MinFree, Space, deficit, measure
from sidecar.storage.maintenance import Maintenance
from tests.conftest import ROOT, wait_until
from tests.support.broker import Broker
from tests.support.faultkit import SmallFilesystem
from tests.support.publisher import Publisher, event_messages
from tests.support.seed import create_db, event, query, sha256

MiB = 1 << 20


# ------------------------------------------------------------------------------ arithmetic
@pytest.mark.parametrize(("text", "percent", "size"), [
    ("10%", 10.0, 0), (" 2.5 % ", 2.5, 0), ("90%", 90.0, 0), ("2GiB", 0.0, 2 << 30),
    ("512MB", 0.0, 512_000_000), (1048576, 0.0, 1 << 20), ("off", 0.0, 0), (0, 0.0, 0),
    ("0%", 0.0, 0),
])
def test_min_free_values(text: object, percent: float, size: int) -> None:
    """min_free is a share ("10%"), a size ("2GiB", bytes) or off ("off", 0, "0%")."""
    assert parse_free_space(text) == (percent, size)
    assert MinFree.parse(text).off == (percent == 0 and size == 0)


def test_required_bytes_and_deficit_count_free_pages_as_room() -> None:
    """The threshold is a share of the file system's size (or a fixed size); the room is its
    free bytes plus the database's free pages; the deficit is what is missing, never negative."""
    ten = MinFree.parse("10%")
    assert ten.required(8 * MiB) == 838_861  # ceil(10 % of 8 MiB)
    assert MinFree.parse("2MiB").required(8 * MiB) == 2 * MiB == MinFree.parse("2MiB").required(1)
    assert deficit(ten, Space(total=1000, fs_free=50, free_pages=0)) == 50
    assert deficit(ten, Space(total=1000, fs_free=50, free_pages=60)) == 0  # reused pages count
    assert deficit(ten, Space(total=1000, fs_free=40, free_pages=40)) == 20
    assert deficit(MinFree.parse("off"), Space(total=1000, fs_free=0, free_pages=0)) == 0
    assert str(ten) == "10%" and str(MinFree.parse("2KiB")) == "2048"


@pytest.mark.parametrize("bad", ["95%", "-1%", "x%", "lots", "-5", True])
def test_bad_min_free_is_refused_naming_the_key(bad: object, tmp_path: Path) -> None:
    """A bad min_free (from the file or the environment) stops the start naming
    retention.min_free."""
    value = f'"{bad}"' if isinstance(bad, str) else str(bad).lower()
    path = tmp_path / "c.toml"
    path.write_text(f"[retention]\nmin_free = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "retention.min_free" and str(path) in str(info.value)
    if isinstance(bad, str):
        with pytest.raises(ConfigError) as info:
            load_config(environ={"KAIRO_SIDECAR_RETENTION__MIN_FREE": bad})
        assert info.value.key == "retention.min_free"


def test_defaults_keep_ten_percent_free_and_the_last_day() -> None:
    """By default the guard keeps 10 % free and never deletes events of the last day."""
    retention = load_config(environ={}).retention
    assert (retention.min_free, retention.min_free_keep) == ("10%", 86400.0)
    assert load_config(environ={"KAIRO_SIDECAR_RETENTION__MIN_FREE": "off"}).retention.min_free \
        == "off"


# ------------------------------------------------------------------------------ on a tmpfs
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem]:
    reason = SmallFilesystem.unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    with SmallFilesystem(tmp_path / "small-fs", size=8 * MiB) as fs:
        yield fs


def guard_config(db_path: Path, **env: str) -> Config:
    return load_config(environ={
        "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
        "KAIRO_SIDECAR_DATABASE__JOURNAL_SIZE_LIMIT": "64KiB",
        "KAIRO_SIDECAR_RETENTION__BATCH_SIZE": "200",
        "KAIRO_SIDECAR_RETENTION__INTERVAL": "0",
        **{"KAIRO_SIDECAR_" + k.upper(): v for k, v in env.items()}})


def seeded(fs: SmallFilesystem, *, old: int = 8000, new: int = 100) -> Path:
    """A database on the tmpfs: ``old`` events received 10 days ago (seq order = i), then
    ``new`` events received now."""
    return create_db(fs.path / "kairo.db", [event(i, age_days=10, prefix="old") for i in range(old)]
                     + [event(i, prefix="new") for i in range(new)])


def run_maintenance(m: Maintenance, calls: int = 2000) -> None:
    """Call the between-batches hook until the guard has nothing left to do."""
    for _ in range(calls):
        m()
        if m.guard is None or not m.guard.running:
            return
    raise AssertionError("the guard did not finish")


def old_ids_left(db_path: Path) -> list[int]:
    return [int(r[0][4:]) for r in query(db_path, "SELECT id FROM events WHERE id LIKE 'old-%' "
                                                  "ORDER BY seq")]


def test_guard_deletes_the_oldest_events_until_min_free_is_back(
        small_fs: SmallFilesystem) -> None:
    """Filled below min_free (25 % of 8 MiB), the guard deletes the oldest events, in steps,
    until the room is back; recent events stay; the real free space is back above the
    threshold once the file is checkpointed."""
    db_path = seeded(small_fs)
    small_fs.fill(leave=512 * 1024)
    config = guard_config(db_path, RETENTION__MIN_FREE="25%")
    db = open_database(config.database, create=False)
    try:
        m = Maintenance(db, config)
        assert m.guard is not None
        run_maintenance(m)
        state = m.guard.state
        required = MinFree.parse("25%").required(small_fs.size)
        assert state.required_bytes == required
        assert state.deleted > 0 and state.runs == 1 and not state.floor_reached
        assert measure(db, db_path).available >= required
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    left = old_ids_left(db_path)
    assert left == list(range(state.deleted, 8000)), "only the oldest went, in seq order"
    assert query(db_path, "SELECT count(*) FROM events WHERE id LIKE 'new-%'")[0][0] == 100
    assert small_fs.free_bytes() >= required


def test_free_pages_in_the_file_count_as_room(small_fs: SmallFilesystem) -> None:
    """Deleted pages still in the file are room (SQLite reuses them): with the file system short
    but enough free pages inside the file, the guard deletes nothing."""
    db_path = seeded(small_fs)
    con = open_database(guard_config(db_path).database, create=False)
    con.execute_sql("DELETE FROM events WHERE seq <= 4000")  # and no vacuum
    con.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    free_pages = measure(con, db_path).free_pages
    con.close()
    assert free_pages > 512 * 1024
    small_fs.fill(leave=256 * 1024)
    min_free = f"{256 * 1024 + free_pages // 2}"  # above the file system's free bytes alone
    config = guard_config(db_path, RETENTION__MIN_FREE=min_free)
    db = open_database(config.database, create=False)
    try:
        m = Maintenance(db, config)
        run_maintenance(m)
        assert m.guard is not None and m.guard.state.deleted == 0
        assert m.guard.state.fs_free_bytes is not None
        assert m.guard.state.fs_free_bytes < int(min_free)
    finally:
        db.close()
    assert query(db_path, "SELECT count(*) FROM events")[0][0] == 4100


def test_guard_stops_at_its_floor_when_something_else_fills_the_disk(
        small_fs: SmallFilesystem) -> None:
    """A disk filled by something else with only recent events stored: the guard deletes none
    (they are within min_free_keep), says it reached its floor, and does not loop."""
    db_path = create_db(small_fs.path / "kairo.db", [event(i, prefix="new") for i in range(500)])
    small_fs.fill(leave=64 * 1024)
    config = guard_config(db_path, RETENTION__MIN_FREE="25%")
    db = open_database(config.database, create=False)
    try:
        m = Maintenance(db, config)
        run_maintenance(m)
        assert m.guard is not None
        assert m.guard.state.deleted == 0 and m.guard.state.floor_reached
        run_maintenance(m)  # checked again later: still nothing, still finishes
        assert m.guard.state.deleted == 0
    finally:
        db.close()
    assert query(db_path, "SELECT count(*) FROM events")[0][0] == 500


def test_min_free_off_deletes_nothing(small_fs: SmallFilesystem) -> None:
    """min_free = "off": however full the disk, the guard deletes nothing."""
    db_path = seeded(small_fs)
    small_fs.fill(leave=64 * 1024)
    config = guard_config(db_path, RETENTION__MIN_FREE="off")
    db = open_database(config.database, create=False)
    try:
        m = Maintenance(db, config)
        for _ in range(20):
            m()
        assert m.guard is not None and m.guard.state.deleted == 0 and not m.guard.running
    finally:
        db.close()
    assert query(db_path, "SELECT count(*) FROM events")[0][0] == 8100


def test_purge_dry_run_shows_what_the_guard_would_delete(small_fs: SmallFilesystem) -> None:
    """`purge --dry-run` shows the guard's estimate of the oldest events it would delete, and
    leaves the file byte for byte as it was."""
    db_path = seeded(small_fs)
    small_fs.fill(leave=512 * 1024)
    before = sha256(db_path)
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
           "KAIRO_SIDECAR_RETENTION__MIN_FREE": "25%"}
    out = subprocess.run([sys.executable, "-m", "sidecar", "purge", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if "disk guard" in line)
    assert "min_free = 25%" in line and "short" in line
    assert 0 < int(line.split()[0]) < 8000
    assert sha256(db_path) == before


def test_cli_purge_runs_the_guard_with_default_batches_on_a_nearly_full_disk(
        small_fs: SmallFilesystem) -> None:
    """`purge` runs the guard; with the default 2000-row batches on a disk with 512 KiB left it
    sizes its steps to what the disk can take (regression: the first delete failed with
    SQLITE_FULL and nothing was deleted)."""
    db_path = seeded(small_fs)
    small_fs.fill(leave=512 * 1024)
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
           "KAIRO_SIDECAR_RETENTION__MIN_FREE": "25%"}
    out = subprocess.run([sys.executable, "-m", "sidecar", "purge"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "disk_guard_failed" not in out.stderr and "disk_guard_purged" in out.stderr
    left = old_ids_left(db_path)
    assert 0 < len(left) < 8000 and left == list(range(8000 - len(left), 8000))
    assert f"deleted {8000 - len(left)} of the oldest events" in out.stdout


# ------------------------------------------------------------------------------ in the daemon
@pytest.mark.slow
def test_daemon_guard_makes_room_while_ingesting_and_stats_show_it(
        small_fs: SmallFilesystem, broker: Broker) -> None:
    """The daemon on a nearly full tmpfs: the guard deletes the oldest stored events while new
    ones arrive, every new event is stored, and the stats answer shows the guard's state."""
    db_path = seeded(small_fs, old=4000, new=0)
    small_fs.fill(leave=1 * MiB)
    config = load_config(environ={
        "KAIRO_SIDECAR_MQTT__HOST": broker.host, "KAIRO_SIDECAR_MQTT__PORT": str(broker.port),
        "KAIRO_SIDECAR_MQTT__CLIENT_ID": f"kairo-test-guard-{uuid.uuid4().hex[:8]}",
        "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
        "KAIRO_SIDECAR_DATABASE__JOURNAL_SIZE_LIMIT": "64KiB",
        "KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": "0.05",
        "KAIRO_SIDECAR_RETENTION__MIN_FREE": "25%",
        "KAIRO_SIDECAR_RETENTION__BATCH_SIZE": "200",
    })
    sidecar = Sidecar(config)
    ready = threading.Event()
    thread = threading.Thread(target=sidecar.run, daemon=True,
                              kwargs={"install_signals": False, "on_ready": ready.set})
    thread.start()
    try:
        assert ready.wait(15)
        with Publisher(broker.host, broker.port) as pub:
            pub.publish(event_messages(2000, prefix="new"))
            assert len(pub.wait_all(60)) == 2000
        wait_until(lambda: query(db_path, "SELECT count(*) FROM events WHERE id LIKE 'new-%'")[0][0]
                   == 2000, timeout=30, message="every new event stored")
        guard = sidecar.maintenance.guard if sidecar.maintenance else None
        assert guard is not None
        wait_until(lambda: guard.state.deleted > 0 and not guard.running, timeout=30,
                   message="the guard to delete")
        with SidecarClient(broker.host, broker.port) as client:
            stats = client.stats()["disk_guard"]
        assert stats["min_free"] == "25%" and stats["deleted"] == guard.state.deleted > 0
        assert stats["min_free_bytes"] == MinFree.parse("25%").required(small_fs.size)
        assert stats["free_bytes"] is not None and stats["available_bytes"] is not None
    finally:
        sidecar.request_stop()
        thread.join(30)
    left = old_ids_left(db_path)
    assert left == list(range(4000 - len(left), 4000)), "only the oldest went"
    assert len(left) < 4000
