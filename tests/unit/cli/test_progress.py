"""The one progress line of the long commands: percent and ETA with a total, count and rate
without, at most 5 redraws a second, and drawn only when standard error is a terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sidecar.cli.progress import Progress
from tests.conftest import ROOT
from tests.support.seed import create_db, event


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_known_total_shows_percent_and_eta() -> None:
    """With a total the line has a bar, the percent, done/total and an ETA from the rate so far."""
    clock = _Clock()
    out = _Terminal()
    bar = Progress("export", 1000, unit=" events", stream=out, clock=clock)
    clock.now += 10
    bar.update(250)
    assert out.getvalue().endswith("export [######                  ]  25.0%  250/1,000 events  ETA 0:30")
    bar.close()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_unknown_total_shows_count_and_rate() -> None:
    """Without a total the line shows the count, the rate and the detail (replay's seq)."""
    clock = _Clock()
    out = _Terminal()
    bar = Progress("purge", unit=" steps", stream=out, clock=clock)
    clock.now += 2
    bar.update(40, detail="8,000 events deleted")
    assert out.getvalue().endswith("\r\x1b[Kpurge 40 steps  20/s  8,000 events deleted")


def test_redraws_at_most_five_times_a_second() -> None:
    """10,000 updates within one (simulated) second draw the line at most 6 times (the first
    at once, then one per 0.2 s), and a note goes on a line of its own."""
    clock = _Clock()
    out = _Terminal()
    bar = Progress("replay", unit=" events", stream=out, clock=clock)
    for _ in range(10_000):
        bar.advance()
        clock.now += 0.0001
    assert 5 <= out.getvalue().count("\r") <= 6
    bar.note("caught up")
    assert "\ncaught up\n" in out.getvalue()


def test_silent_on_a_pipe() -> None:
    """On a stream that is not a terminal nothing at all is written."""
    out = io.StringIO()
    bar = Progress("import", 10, stream=out)
    bar.update(5)
    bar.note("x")
    bar.close()
    assert out.getvalue() == ""


# --------------------------------------------------------------------- the commands
def _commands(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    tmp_path.mkdir()
    db = create_db(tmp_path / "kairo.db", [event(i) for i in range(1500)])
    export = tmp_path / "some.jsonl"
    export.write_bytes(b"".join(
        b'{"id":"i-%d","topic":"kairo/t","type":"t","source":"s","payload":{},"metadata":{},'
        b'"created_at":1,"received_at":1}\n' % i for i in range(300)))
    return {
        "export": (["export", "-o", str(tmp_path / "out.jsonl")], {}),
        "import": (["import", str(export)], {}),
        "backup": (["backup", str(tmp_path / "copy.db")], {}),
        "recover": (["recover", str(db), str(tmp_path / "recovered.db")], {}),
        "purge": (["purge"], {"KAIRO_SIDECAR_RETENTION__MAX_EVENTS": "100"}),
    }


def _run(tmp_path: Path, name: str, *, terminal: bool) -> tuple[int, str]:
    argv, extra = _commands(tmp_path)[name]
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{tmp_path / 'kairo.db'}",
           "KAIRO_SIDECAR_LOG__LEVEL": "warning", **extra}
    command = [sys.executable, "-m", "sidecar", *argv]
    if not terminal:
        done = subprocess.run(command, env=env, capture_output=True, timeout=60, cwd=ROOT)
        return done.returncode, done.stderr.decode(errors="replace")
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=slave,
                                cwd=ROOT)
        os.close(slave)
        code = proc.wait(60)
        reader.join(10)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("name", ["export", "import", "backup", "recover", "purge"])
def test_bar_on_a_terminal_and_not_on_a_pipe(tmp_path: Path, name: str) -> None:
    """Each long command draws its progress line on a terminal (ending with a newline) and
    writes none of it when standard error is a pipe."""
    code, shown = _run(tmp_path / "tty", name, terminal=True)
    assert code == 0, shown
    assert f"\r\x1b[K{name} " in shown, shown
    line = shown.split(f"\r\x1b[K{name} ")[-1]
    assert "\n" in line, shown  # the line is ended
    if name in ("export", "import", "backup", "recover"):
        assert "100.0%" in line, shown  # a known total
    code, piped = _run(tmp_path / "pipe", name, terminal=False)
    assert code == 0, piped
    assert "\r" not in piped and "\x1b[K" not in piped, piped
