"""Tools for the fault-injection tests and the soak: what is stored, what the daemon logged, and
the faults themselves (a lock held by another process, a size-limited file system, a stream
publisher for more than 65,535 events).

No pytest fixtures here, so ``python -m tests.soak`` uses the same code as the CI tests.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SidecarProcess, count_rows, wait_until
from tests.support.publisher import Message, Publisher
from tests.support.stores import Target, target_rows

# paho numbers QoS 1 messages 1..65535 per client: one Publisher per chunk of this many.
CHUNK = 60_000


# ---------------------------------------------------------------------------- the stored data
def skip_reason_external() -> str | None:
    """Why broker restarts are impossible with this broker (``None`` when they are possible)."""
    if os.environ.get("KAIRO_TEST_BROKER", "").startswith("external:"):
        return "broker restarts need a local or docker broker"
    return None


def stored_ids(db: Target, *, prefix: str | None = None) -> tuple[int, int, set[str]]:
    """(count(*), count(DISTINCT id), the set of ids) of ``events`` (ids starting ``prefix``),
    in an SQLite file or a PostgreSQL database (``SidecarProcess.db``)."""
    where, args = ("WHERE id >= ? AND id < ?", (prefix, prefix + "\U0010ffff")) if prefix else ("", ())
    ids = [row[0] for row in target_rows(db, f"SELECT id FROM events {where}", args)]
    return len(ids), len(set(ids)), set(ids)


def assert_exactly(db: Target, expected: set[str], *, prefix: str | None = None) -> None:
    """Every expected id stored once, nothing else (among the ids starting with ``prefix``)."""
    total, distinct, ids = stored_ids(db, prefix=prefix)
    assert total == distinct == len(expected), (total, distinct, len(expected))
    assert ids == expected, (f"missing {sorted(expected - ids)[:10]}, "
                             f"unexpected {sorted(ids - expected)[:10]}")


def wait_rows(db_path: Target, n: int, timeout: float, table: str = "events",
              sidecar: SidecarProcess | None = None) -> None:
    """Wait until ``table`` has ``n`` rows; fail early if the sidecar process exits."""
    def reached() -> bool:
        if sidecar is not None and sidecar.proc is not None and sidecar.proc.poll() is not None:
            raise AssertionError(f"sidecar exited ({sidecar.proc.returncode}) while waiting "
                                 f"for {n} rows in {table}:\n{sidecar.log_text()[-4000:]}")
        return count_rows(db_path, table) >= n

    try:
        wait_until(reached, timeout=timeout, interval=0.1, message=f"{n} rows in {table}")
    except AssertionError as exc:
        if "sidecar exited" in str(exc):
            raise
        raise AssertionError(f"{count_rows(db_path, table)} of {n} rows in {table} after "
                             f"{timeout}s") from None


@dataclass
class Outcome:
    """What a fault scenario ends with: the exact count and the duplicate check."""

    name: str
    events: int  # known events the broker accepted (PUBACK to the publisher)
    stored: int = 0  # distinct ids of those found in the database
    lost: int = 0  # accepted but not stored
    duplicated: int = 0  # rows beyond one per id
    unexpected: int = 0  # stored ids nobody published
    kills: int = 0  # SIGKILLs of the sidecar
    broker_restarts: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.stored == self.events and not (self.lost or self.duplicated or self.unexpected)

    def check(self) -> Outcome:
        assert self.ok, self
        return self


def outcome(name: str, db_path: Target, accepted: set[str], *, prefix: str,
            **extra: Any) -> Outcome:
    """Compare the stored ids starting with ``prefix`` with the ``accepted`` ones."""
    total, distinct, ids = stored_ids(db_path, prefix=prefix)
    return Outcome(name, events=len(accepted), stored=len(ids & accepted),
                   lost=len(accepted - ids), duplicated=total - distinct,
                   unexpected=len(ids - accepted), **extra)


# ---------------------------------------------------------------------------- the sidecar's log
def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a sidecar log (other lines, e.g. tracebacks, are skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with suppress(ValueError):
                out.append(json.loads(line))
    return out


def events_named(text: str, name: str) -> list[dict[str, Any]]:
    return [e for e in log_events(text) if e.get("event") == name]


def last_event(text: str, name: str) -> dict[str, Any]:
    found = events_named(text, name)
    assert found, f"no {name!r} in the sidecar log"
    return found[-1]


def sidecar_env(**overrides: object) -> dict[str, object]:
    """Config overrides shared by the fault tests (small reconnect delays come from conftest)."""
    return {"writer__shutdown_timeout": 10, **overrides}


# A message the daemon can only dead-letter: the network thread logs ``event_rejected`` for it
# while handling it. Mosquitto delivers one publisher's QoS 1 messages in order and the sidecar
# handles them in order on one thread, so seeing the probe's rejection means every message
# published before it has been handed to the writer.
def probe(tag: str) -> Message:
    return Message(f"probe-{tag}", "kairo/test/probe", f"probe {tag}: not json".encode())


def wait_probe_handled(sidecar: SidecarProcess, tag: str, *, after: int, timeout: float = 30) -> None:
    def seen() -> bool:
        if sidecar.proc is not None and sidecar.proc.poll() is not None:
            raise AssertionError(f"sidecar exited:\n{sidecar.log_text()[-4000:]}")
        return any(e.get("event") == "event_rejected" and e.get("topic") == "kairo/test/probe"
                   for e in log_events(sidecar.log_text()[after:]))

    wait_until(seen, timeout=timeout, interval=0.05, message=f"probe {tag} handled by the sidecar")


# ---------------------------------------------------------------------------- faults
@contextmanager
def exclusive_lock(db_path: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock from another connection (BEGIN EXCLUSIVE) until the block ends."""
    con = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        try:
            yield con
        finally:
            con.execute("ROLLBACK")
    finally:
        con.close()


class SmallFilesystem:
    """A size-limited tmpfs mounted on ``path`` (needs root, or CAP_SYS_ADMIN), so that the
    daemon meets a real ENOSPC; ``fill()`` takes the free space, ``free()`` returns it."""

    def __init__(self, path: Path, *, size: int) -> None:
        self.path = path
        self.size = size
        self.filler = path / "filler"
        self.mounted = False

    @staticmethod
    def unavailable(scratch: Path) -> str | None:
        """Why no tmpfs can be mounted here (``None`` when it can)."""
        if shutil.which("mount") is None or shutil.which("umount") is None:
            return "mount/umount not installed"
        probe_dir = scratch / "tmpfs-probe"
        probe_dir.mkdir(parents=True, exist_ok=True)
        fs = SmallFilesystem(probe_dir, size=1 << 20)
        try:
            fs.mount()
        except OSError as exc:
            return f"cannot mount a tmpfs (needs root): {exc}"
        fs.unmount()
        return None

    def mount(self) -> SmallFilesystem:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755",
                               "tmpfs", str(self.path)], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            raise OSError(done.stderr.strip() or f"mount exited {done.returncode}")
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30,
                           check=False)
            self.mounted = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, *, leave: int = 0) -> int:
        """Write a filler file until the file system is full (or only ``leave`` bytes are free);
        return the filler's size."""
        block = b"\0" * 65536
        written = 0
        with self.filler.open("ab") as fh:
            while True:
                room = self.free_bytes() - leave
                if room <= 0:
                    break
                try:
                    written += fh.write(block[: min(len(block), room)])
                    fh.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        return written

    def free(self) -> None:
        with suppress(FileNotFoundError):
            self.filler.unlink()

    def __enter__(self) -> SmallFilesystem:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size (VmHWM) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


# ---------------------------------------------------------------------------- publishing
class Stream:
    """Publishes any number of QoS 1 messages in the background, one ``Publisher`` (one paho
    client) per chunk of 60,000, and tells how many the broker has accepted so far."""

    def __init__(self, host: str, port: int, messages: Sequence[Message], *,
                 rate: float | None = None, max_pending: int = 2000) -> None:
        self._host, self._port = host, port
        self._chunks = [messages[i:i + CHUNK] for i in range(0, len(messages), CHUNK)]
        self._rate = rate
        self._max_pending = max_pending
        self._done_accepted: set[str] = set()
        self._current: Publisher | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="test-stream", daemon=True)
        self.error: BaseException | None = None
        self.disconnects = 0

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                pub = Publisher(self._host, self._port)
                pub.connect(timeout=60)
                with self._lock:
                    self._current = pub
                try:
                    pub.publish(chunk, rate=self._rate, max_pending=self._max_pending)
                    accepted = pub.wait_all(timeout=600)
                finally:
                    pub.close()
                with self._lock:
                    self._done_accepted |= accepted
                    self._current = None
                    self.disconnects += pub.disconnects
        except BaseException as exc:  # reported by wait()
            self.error = exc

    @property
    def accepted_count(self) -> int:
        with self._lock:
            current = self._current.accepted_count if self._current is not None else 0
            return len(self._done_accepted) + current

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> set[str]:
        """Wait for every PUBACK; return the accepted keys."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"stream still publishing after {timeout}s "
                                 f"({self.accepted_count} accepted)")
        if self.error is not None:
            raise AssertionError(f"stream failed: {self.error!r}") from self.error
        return set(self._done_accepted)

    def wait_accepted(self, n: int, *, timeout: float) -> None:
        def reached() -> bool:
            if self.error is not None:
                raise AssertionError(f"stream failed: {self.error!r}")
            return self.accepted_count >= n or self.finished
        wait_until(reached, timeout=timeout, interval=0.01, message=f"{n} PUBACKs")


def restart(sidecar: SidecarProcess, *, wait_ready: bool = False) -> int:
    """Start the (killed or stopped) sidecar again; return the log offset before the start."""
    offset = len(sidecar.log_text())
    sidecar.start(wait_ready=wait_ready)
    return offset
