"""Backup, export and import: an online backup while the daemon writes, JSON lines that
round-trip byte for byte, the export filters, and an import that is idempotent."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli.progress import Progress
from sidecar.config import DatabaseConfig
from sidecar.errors import UsageError
from sidecar.storage.backup import backup
from tests.conftest import ROOT, count_rows, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Publisher, event_messages
from tests.support.seed import create_db, event, query


def run_cli(*args: str, db: Path, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db}"}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env=env, input=stdin,
                          capture_output=True, timeout=timeout, cwd=ROOT)


COLUMNS = ("id, topic, type, source, payload, metadata, created_at, received_at, correlation_id, "
           "causation_id, trace_id")


def varied_rows() -> list[tuple[object, ...]]:
    """Events with everything an export must carry: unicode, odd JSON spacing, nulls."""
    rows: list[tuple[object, ...]] = [
        event(i, type="kairo.sensor.temp" if i % 2 else "kairo.user.message", age_days=i % 10,
              correlation_id=f"wf-{i % 7}" if i % 3 else None)
        for i in range(300)]
    rows.append(("odd-1", "kairo/ü", "kairo.odd", "src",
                 '{ "text" : "héllo \\u2603 ☃",  "n": [1, 2.50, null] }',
                 '{"traceId": "abc", "x": {"y": true}}', 5, 6, None, "cause-1", "abc"))
    rows.append(("odd-2", "kairo/q", "kairo.odd", "src", "[]", "{}", 7, 8, "c", None, None))
    return rows


def test_export_import_round_trips(tmp_path: Path) -> None:
    """export -> import into a new database gives the same events, every column but seq
    identical (payload and metadata byte for byte), in the same order."""
    src = create_db(tmp_path / "src.db", varied_rows())
    out = run_cli("export", "--output", str(tmp_path / "all.jsonl"), db=src)
    assert out.returncode == 0, out.stderr
    assert b"exported 302 events" in out.stderr
    dest = tmp_path / "dest.db"
    result = run_cli("import", str(tmp_path / "all.jsonl"), db=dest)
    assert result.returncode == 0, result.stderr
    assert b"imported 302 new events; 0 were already stored" in result.stdout
    order = "ORDER BY seq"
    assert query(dest, f"SELECT {COLUMNS} FROM events {order}") == \
        query(src, f"SELECT {COLUMNS} FROM events {order}")


def test_import_twice_adds_nothing(tmp_path: Path) -> None:
    """Importing the same file again (or into the database it came from) inserts nothing."""
    src = create_db(tmp_path / "src.db", varied_rows())
    export = run_cli("export", db=src).stdout  # to standard output
    assert run_cli("import", "-", db=src, stdin=export).stdout.startswith(b"imported 0 new events")
    dest = tmp_path / "dest.db"
    assert run_cli("import", "-", db=dest, stdin=export).returncode == 0
    again = run_cli("import", "-", db=dest, stdin=export)
    assert again.returncode == 0 and b"imported 0 new events; 302 were already stored" in again.stdout
    assert count_rows(dest) == 302


def test_export_filters(tmp_path: Path) -> None:
    """--type (glob), --since (an age), --until and --correlation-id select like queries do."""
    src = create_db(tmp_path / "src.db", varied_rows())

    def exported(*args: str) -> list[dict[str, object]]:
        result = run_cli("export", *args, db=src)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    sensors = exported("--type", "kairo.sensor.*")
    assert len(sensors) == 150 and {e["type"] for e in sensors} == {"kairo.sensor.temp"}
    recent = exported("--since", "4d12h")
    assert {e["id"] for e in recent} == {f"e-{i:07d}" for i in range(300) if i % 10 < 5}
    assert [e["id"] for e in exported("--until", "10")] == ["odd-1", "odd-2"]
    wf = exported("--correlation-id", "wf-3")
    assert wf and all(e["correlation_id"] == "wf-3" for e in wf)
    seqs = [e["seq"] for e in exported()]
    assert seqs == sorted(seqs)


def test_export_rejects_a_bad_filter(tmp_path: Path) -> None:
    """A malformed --since is a usage error (exit 2) naming the option."""
    src = create_db(tmp_path / "src.db")
    result = run_cli("export", "--since", "last tuesday", db=src)
    assert result.returncode == 2
    assert b"since" in result.stderr


def test_import_names_the_bad_line(tmp_path: Path) -> None:
    """A line that is not an exported event stops the import with its line number (exit 2);
    the lines before it are imported and importing again is safe."""
    src = create_db(tmp_path / "src.db", varied_rows()[:3])
    lines = run_cli("export", db=src).stdout.splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join([*lines[:2], b'{"id": "x"}', *lines[2:]]) + b"\n")
    dest = tmp_path / "dest.db"
    result = run_cli("import", str(bad), db=dest)
    assert result.returncode == 2
    assert b"line 3" in result.stderr
    assert count_rows(dest) == 2


def test_backup_refuses_to_overwrite(tmp_path: Path) -> None:
    """An existing DEST is refused (exit 2) unless --force; with --force it is replaced."""
    src = create_db(tmp_path / "src.db", varied_rows())
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"keep me")
    result = run_cli("backup", str(dest), db=src)
    assert result.returncode == 2 and b"already exists" in result.stderr
    assert dest.read_bytes() == b"keep me"
    forced = run_cli("backup", "--force", str(dest), db=src)
    assert forced.returncode == 0, forced.stderr
    assert query(dest, "PRAGMA integrity_check") == [("ok",)]
    assert count_rows(dest) == 302
    with pytest.raises(UsageError):
        backup(DatabaseConfig(url=f"sqlite:///{src}"), src, force=True)


def test_backup_while_the_daemon_writes(tmp_path: Path, broker: Broker, sidecar_factory) -> None:
    """A backup taken while the daemon stores events at full speed is one consistent snapshot:
    it opens, passes integrity_check, and holds every event committed before it started."""
    db_path = tmp_path / "kairo.db"
    create_db(db_path, [event(i, prefix="seed") for i in range(60_000)])  # ~20 MB to copy
    sidecar = sidecar_factory(broker, writer__flush_interval="0.02").start()
    dest = tmp_path / "backup.db"
    with Publisher(broker.host, broker.port, max_inflight=200) as pub:
        pub.publish_in_background(event_messages(30_000, prefix="live"))
        wait_until(lambda: count_rows(db_path) > 61_000, timeout=30, message="ingest under way")
        before = count_rows(db_path)
        seen: list[int] = []

        def progress(done: int, total: int) -> None:
            if not seen:  # first step: let the daemon commit more before the copy goes on
                seen.append(count_rows(db_path))
                wait_until(lambda: count_rows(db_path) > seen[0], timeout=30,
                           message="a commit during the backup")

        result = backup(DatabaseConfig(url=f"sqlite:///{db_path}"), dest, step_pages=64,
                        progress=progress)
        after = count_rows(db_path)
        pub.wait_all(120)
    assert sidecar.terminate() == 0
    assert query(dest, "PRAGMA integrity_check") == [("ok",)]
    assert before <= result.events <= seen[0] < after
    assert count_rows(dest) == result.events
    copied = {r[0] for r in query(dest, "SELECT id FROM events")}
    assert {f"seed-{i:07d}" for i in range(60_000)} <= copied


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    """The progress bar is drawn on a terminal (ending at 100%) and nothing is written to a pipe."""
    tty = _Terminal()
    bar = Progress("backup", 200, stream=tty, unit=" pages")
    bar.update(50)
    bar.update(200)
    bar.close()
    assert "\r\x1b[Kbackup [" in tty.getvalue() and "100.0%" in tty.getvalue()
    assert tty.getvalue().endswith("200/200 pages\n")
    pipe = io.StringIO()
    quiet = Progress("export", 10, stream=pipe)
    quiet.update(10)
    quiet.close()
    assert pipe.getvalue() == ""
