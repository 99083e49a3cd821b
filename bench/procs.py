"""Processes under measurement: the daemon as a child process, baselines, /proc sampling, and a
reader that sees when events are committed.

Times are ``time.monotonic_ns`` (CLOCK_MONOTONIC, one clock for every process on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WALL_TO_MONO_NS = time.time_ns() - time.monotonic_ns()  # both clocks tick alike over a run


def wall_iso_to_mono_ns(stamp: str) -> int:
    """A structlog ISO timestamp (UTC) as ``monotonic_ns``."""
    wall = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return int(wall * 1e9) - WALL_TO_MONO_NS


# ------------------------------------------------------------------------------ /proc
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def proc_io(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                key, value = line.split(":", 1)
                out[key] = int(value)
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.result: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["bench (this process)"] = time.process_time()
        return self

    def stop(self) -> dict[str, float]:
        """Per process: CPU use in % of one core over the interval."""
        wall = max(1e-9, time.monotonic() - self._t0)
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["bench (this process)"] = time.process_time()
        self.result = {name: round(100 * (now[name] - self._start[name]) / wall, 1)
                       for name in now}
        return self.result


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[int, int]] = []  # (monotonic_ns, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-rss")

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status(self.pid).get("VmRSS")
            if rss:
                self.samples.append((time.monotonic_ns(), rss))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        """The largest sample (bytes)."""
        self._stop.set()
        self._thread.join(5)
        return max((rss for _, rss in self.samples), default=0)


# ------------------------------------------------------------------------------ commit watcher
class CommitWatcher:
    """A read-only connection to the daemon's database: how many events are committed, and
    (``record``) when each one became visible."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._con: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True,
                                        isolation_level=None, timeout=30,
                                        check_same_thread=False)
        return self._con

    def max_seq(self) -> int:
        try:
            row = self._connection().execute("SELECT max(seq) FROM events").fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0] or 0)

    def count(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM events").fetchone()[0])

    def wait_for(self, target: int, *, timeout: float, interval: float = 0.005,
                 alive: subprocess.Popen[bytes] | None = None) -> int:
        """Poll until ``max(seq) >= target``; return the ``monotonic_ns`` it was seen."""
        deadline = time.monotonic() + timeout
        while True:
            if self.max_seq() >= target:
                return time.monotonic_ns()
            if alive is not None and alive.poll() is not None:
                raise RuntimeError(f"the daemon exited ({alive.returncode}) before committing "
                                   f"{target} events")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.max_seq()} of {target} events after {timeout}s")
            time.sleep(interval)

    def record(self, target: int, *, timeout: float, interval: float = 0.002) -> dict[str, int]:
        """Poll ``seq > last`` until ``target`` events are seen; id -> first seen (ns)."""
        seen: dict[str, int] = {}
        last = 0
        con = self._connection()
        deadline = time.monotonic() + timeout
        while len(seen) < target:
            rows = con.execute("SELECT seq, id FROM events WHERE seq > ? ORDER BY seq",
                               (last,)).fetchall()
            now = time.monotonic_ns()
            for seq, event_id in rows:
                seen[event_id] = now
                last = seq
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen)} of {target} events after {timeout}s")
            if not rows:
                time.sleep(interval)
        return seen

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


# ------------------------------------------------------------------------------ the daemon
@dataclass
class Sidecar:
    """``python -m sidecar run`` as a child process, configured through the environment."""

    workdir: Path
    port: int
    client_id: str
    overrides: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None  # record a py-spy profile (collapsed stacks) here
    proc: subprocess.Popen[bytes] | None = None
    started_ns: int = 0

    @property
    def db_path(self) -> Path:
        return self.workdir / "kairo.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sidecar.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "KAIRO_SIDECAR_MQTT__HOST": "127.0.0.1",
            "KAIRO_SIDECAR_MQTT__PORT": str(self.port),
            "KAIRO_SIDECAR_MQTT__CLIENT_ID": self.client_id,
            "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{self.db_path}",
            "KAIRO_SIDECAR_LOG__FORMAT": "json",
            "KAIRO_SIDECAR_LOG__LEVEL": "info",
        })
        env.update({"KAIRO_SIDECAR_" + k.upper(): v for k, v in self.overrides.items()})
        return env

    def start(self) -> Sidecar:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [sys.executable, "-m", "sidecar", "run"]
        if self.profile is not None:
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                   "--rate", "250", "--threads", "--nonblocking", "-o", str(self.profile),
                   "--", *cmd]
        with self.log_path.open("ab") as log:
            self.started_ns = time.monotonic_ns()
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir)
        return self

    @property
    def pid(self) -> int:
        """The daemon's pid (under py-spy: its child)."""
        assert self.proc is not None
        if self.profile is None:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                if children.split():
                    return int(children.split()[0])
            time.sleep(0.01)
        raise RuntimeError("py-spy started no child")

    def log_events(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text(errors="replace")[self._offset:]
        events = []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def wait_log(self, name: str, *, timeout: float = 60.0, interval: float = 0.002) -> dict[str, Any]:
        """Wait for the log event ``name``; return it (with ``seen_ns``: when it was read)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.log_events():
                if event.get("event") == name:
                    event["seen_ns"] = time.monotonic_ns()
                    return event
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}):\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name!r} in the daemon's log after {timeout}s")
            time.sleep(interval)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a clean stop: flush, ack, checkpoint) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_baseline(mode: str, port: int, client_id: str, *, count: int = 0, out: Path | None = None,
                 db: Path | None = None, record: bool = False, receive_max: int = 5000,
                 wait: bool = True, timeout: float = 300.0,
                 v311: bool = False) -> subprocess.Popen[bytes]:
    """Start ``python -m bench.subscribers MODE`` (and wait for it unless ``wait=False``);
    ``v311``: prepare/clean the session of an MQTT 3.1.1 subscriber (``receive311``)."""
    cmd = [sys.executable, "-m", "bench.subscribers", mode, "--port", str(port), "--client-id",
           client_id, "--count", str(count), "--receive-max", str(receive_max),
           "--timeout", str(timeout)]
    if out is not None:
        cmd += ["--out", str(out)]
    if db is not None:
        cmd += ["--db", str(db)]
    if record:
        cmd.append("--record")
    if v311:
        cmd.append("--v311")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    if wait:
        code = proc.wait(timeout + 30)
        if code:
            raise RuntimeError(f"baseline {mode} exited {code}")
    return proc


# ------------------------------------------------------------------------------ wear
def exit_io(proc: subprocess.Popen[bytes], pid: int | None = None, *,
            timeout: float = 120.0) -> dict[str, int]:
    """Wait for ``proc`` to exit and return its final ``/proc/<pid>/io`` (read while it is a
    zombie, before it is reaped: everything it wrote, its last checkpoint included)."""
    pid = proc.pid if pid is None else pid
    deadline = time.monotonic() + timeout
    while True:  # waitid has no timeout: poll with WNOHANG, then read before reaping
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None and info.si_pid == pid:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still running after {timeout}s")
        time.sleep(0.01)
    io = proc_io(pid)
    proc.wait(10)
    return io


def settle(*paths: Path) -> None:
    """fsync ``paths`` (those that exist) and drop them from the page cache, so the next
    process to change a page counts it in its ``write_bytes`` (a page already dirty is not
    counted again), and counts 4 KiB for it: a file written in large chunks (a copy) sits in
    large folios, and dirtying 4 KiB of a 64 KiB folio counts all 64 KiB (ext4 on Linux 6.x;
    measured 61,603 vs 4,055 bytes per 4 KiB page rewritten, see BENCHMARKS.md)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path, "rb+") as fh:
            os.fsync(fh.fileno())
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range")


class SyncCounter:
    """``strace -f -c -e trace=fsync,fdatasync,sync_file_range`` attached to a running process (all its
    threads) until it exits: how many sync calls it made. ``/proc/<pid>/io`` has no such count
    (``syscw`` counts every write call)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> SyncCounter:
        self.proc = subprocess.Popen(
            ["strace", "-f", "-c", "-e", "trace=" + ",".join(SYNC_CALLS), "-o", str(self.out),
             "-p", str(self.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while _tracer(self.pid) == 0:  # attached when the tracee names its tracer
            if self.proc.poll() is not None:
                raise RuntimeError(f"strace could not attach to {self.pid} "
                                   f"(exit {self.proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"strace did not attach to {self.pid} in {timeout}s")
            time.sleep(0.01)
        return self

    def result(self, timeout: float = 120.0) -> dict[str, int]:
        """After the traced process exited: calls per sync system call (0 where none)."""
        assert self.proc is not None
        self.proc.wait(timeout)
        counts = dict.fromkeys(SYNC_CALLS, 0)
        for line in self.out.read_text().splitlines():
            fields = line.split()  # % time, seconds, usecs/call, calls, [errors], syscall
            if len(fields) >= 5 and fields[-1] in counts:
                counts[fields[-1]] = int(fields[3])
        return counts


def _tracer(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        return -1
    return 0
