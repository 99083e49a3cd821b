"""A FUSE pass-through file system that loses every write not yet fsynced when the power is cut.

``python -m tests.support.powercut BACKING MOUNT`` mounts ``BACKING`` (a directory: the "disk")
at ``MOUNT`` (the foreground process serves it; :class:`PowerCutMount` runs it for the tests).

What it models, per file (the "page cache"):

* ``write`` and ``truncate`` (size changes) since the file's last ``fsync``/``fdatasync`` are kept
  in memory, in 4 KiB blocks; reads and ``stat`` see them, as they would see the page cache.
* ``fsync``/``fdatasync`` (any descriptor of the file, read-only ones included) applies them to
  the backing file and fsyncs it: only then are they on the "disk".
* closing a file syncs nothing: its pending writes stay until a sync or the cut.
* directory operations (create, unlink, rename, mkdir, rmdir, chmod, utimens) are applied to the
  backing directory at once and count as durable at once, as on a file system that journals its
  metadata before it returns (lenient: a real ext4 can lose a new file's name that no directory
  fsync covered). A new file is durable with size 0; an unlinked or renamed file takes its pending
  writes with it. SQLite's ``-wal`` and ``-shm`` are ordinary files here: their creation and
  deletion are durable at once, their contents only when synced.
* SQLite's ``-shm`` is ``mmap``ed ``MAP_SHARED``: that works because the mount does not use
  ``direct_io`` (the kernel page cache backs the mapping; dirty pages reach ``write`` here). It is
  never fsynced, so it never reaches the disk; SQLite rebuilds it after a crash.

The power cut: the controlling process writes ``cut`` on this process's stdin (after SIGKILLing
whatever used the mount); every pending write is dropped and every later operation fails with
EIO (so nothing still in flight reaches the disk); then the mount is unmounted. What is in
``BACKING`` is what survived. "Power returns" is opening ``BACKING`` (or mounting it again).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BLOCK = 4096
MOUNT_TIMEOUT = 10.0
_STAT_KEYS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
              "st_uid", "st_blocks")
_STATVFS_KEYS = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                 "f_flag", "f_frsize", "f_namemax")


def unavailable() -> str | None:
    """Why a power-cut mount cannot run here (a skip reason), or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if os.geteuid() != 0:
        return "mounting and unmounting need root (the test runs umount)"
    try:
        import fuse  # noqa: F401  (fusepy: ctypes over libfuse 2)
    except ImportError:
        return "the fusepy package is not installed (pip install -c constraints.txt -e '.[test]')"
    except OSError:
        return "libfuse 2 is not installed (Debian package libfuse2)"
    return None


# --------------------------------------------------------------------------- the page cache


@dataclass
class _Pending:
    """A file's writes since its last sync. ``floor``: backing bytes at or past it are no longer
    part of the file (it was truncated below them, or grown over a hole); ``blocks`` hold the
    file's current content of every block written since the sync (zeros past ``size``)."""

    size: int
    floor: int
    blocks: dict[int, bytearray] = field(default_factory=dict)

    def _backing_block(self, fd: int, index: int) -> bytearray:
        buf = bytearray(BLOCK)
        start = index * BLOCK
        visible = min(self.floor, self.size) - start
        if visible > 0:
            data = os.pread(fd, min(BLOCK, visible), start)
            buf[:len(data)] = data
        return buf

    def read(self, fd: int, size: int, offset: int) -> bytes:
        end = min(offset + size, self.size)
        out = bytearray()
        pos = offset
        while pos < end:
            index, within = divmod(pos, BLOCK)
            buf = self.blocks.get(index)
            if buf is None:
                buf = self._backing_block(fd, index)
            take = min(BLOCK - within, end - pos)
            out += buf[within:within + take]
            pos += take
        return bytes(out)

    def write(self, fd: int, data: bytes, offset: int) -> None:
        if offset > self.size:  # a hole: what the backing file holds there is not the file's
            self.floor = min(self.floor, self.size)
        pos, done = offset, 0
        while done < len(data):
            index, within = divmod(pos, BLOCK)
            buf = self.blocks.get(index)
            if buf is None:
                buf = self.blocks[index] = self._backing_block(fd, index)
            take = min(BLOCK - within, len(data) - done)
            buf[within:within + take] = data[done:done + take]
            pos += take
            done += take
        self.size = max(self.size, offset + len(data))

    def truncate(self, length: int) -> None:
        self.floor = min(self.floor, self.size, length)
        if length < self.size:
            for index in [i for i in self.blocks if i * BLOCK >= length]:
                del self.blocks[index]
            last, within = divmod(length, BLOCK)
            if within and last in self.blocks:
                self.blocks[last][within:] = bytes(BLOCK - within)
        self.size = length

    def apply(self, fd: int) -> None:
        """Write this file's pending content to its backing file (the caller fsyncs)."""
        if os.fstat(fd).st_size > self.floor:
            os.ftruncate(fd, self.floor)
        for index in sorted(self.blocks):
            start = index * BLOCK
            n = min(BLOCK, self.size - start)
            if n > 0:
                os.pwrite(fd, bytes(self.blocks[index][:n]), start)
        os.ftruncate(fd, self.size)


def _operations() -> Any:
    """The fusepy Operations class (built on demand: importing fusepy needs libfuse)."""
    from fuse import FuseOSError, Operations

    class PowerCutFS(Operations):
        """Pass-through to ``root`` that holds unsynced writes in memory (module docstring)."""

        def __init__(self, root: str) -> None:
            self.root = os.path.realpath(root)
            self.pending: dict[str, _Pending] = {}
            self._mutex = threading.RLock()
            self.dead = False
            self.syncs = 0

        # ---------------------------------------------------------- helpers
        def _real(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def _alive(self) -> None:
            if self.dead:
                raise FuseOSError(errno.EIO)

        def _state(self, path: str) -> _Pending:
            p = self.pending.get(path)
            if p is None:
                size = os.stat(self._real(path)).st_size
                p = self.pending[path] = _Pending(size=size, floor=size)
            return p

        def cut(self) -> dict[str, int]:
            """The power cut: drop every pending write, fail every later operation; returns the
            4 KiB blocks dropped, by path (a file truncated and not synced counts one)."""
            with self._mutex:
                self.dead = True
                dropped = {path: max(1, len(p.blocks)) for path, p in self.pending.items()}
                self.pending.clear()
                return dropped

        def __call__(self, op: str, *args: Any) -> Any:
            with self._mutex:
                if op != "destroy":
                    self._alive()
                try:
                    return super().__call__(op, *args)
                except OSError as exc:
                    if isinstance(exc, FuseOSError):
                        raise
                    raise FuseOSError(exc.errno or errno.EIO) from None

        # ---------------------------------------------------------- metadata
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.lstat(self._real(path))
            attrs = {key: getattr(st, key) for key in _STAT_KEYS}
            p = self.pending.get(path)
            if p is not None:
                attrs["st_size"] = p.size
                attrs["st_blocks"] = (p.size + 511) // 512
            return attrs

        def access(self, path: str, amode: int) -> None:
            if not os.access(self._real(path), amode):
                raise FuseOSError(errno.EACCES)

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def statfs(self, path: str) -> dict[str, Any]:
            st = os.statvfs(self._real(path))
            return {key: getattr(st, key) for key in _STATVFS_KEYS}

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._real(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.chown(self._real(path), uid, gid)

        def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
            os.utime(self._real(path), times)

        def readlink(self, path: str) -> str:
            return os.readlink(self._real(path))

        # ---------------------------------------------------------- directory operations
        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(self._real(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._real(path))

        def unlink(self, path: str) -> None:
            os.unlink(self._real(path))
            self.pending.pop(path, None)

        def rename(self, old: str, new: str) -> None:
            os.rename(self._real(old), self._real(new))
            moved = {k: v for k, v in self.pending.items() if k == old or k.startswith(old + "/")}
            self.pending.pop(new, None)
            for key, state in moved.items():
                del self.pending[key]
                self.pending[new + key[len(old):]] = state

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fd = os.open(self._real(path), os.O_RDWR | os.O_CREAT, mode)
            self.pending.pop(path, None)
            return fd

        def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
            fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        # ---------------------------------------------------------- file contents
        def open(self, path: str, flags: int) -> int:
            # read-write whatever the caller asked: a sync through a read-only descriptor must
            # still be able to write the pending blocks
            return os.open(self._real(path), os.O_RDWR)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            p = self.pending.get(path)
            if p is None:
                return os.pread(fh, size, offset)
            return p.read(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._state(path).write(fh, data, offset)
            return len(data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            self._state(path).truncate(length)

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            p = self.pending.pop(path, None)
            if p is not None:
                p.apply(fh)
            os.fsync(fh)
            self.syncs += 1

        def flush(self, path: str, fh: int) -> None:
            return None  # close(2) syncs nothing

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

    return PowerCutFS


def _control(fs: Any, stdin: IO[str], stdout: IO[str]) -> None:
    """Commands on stdin, one a line: ``cut`` (answers ``cut PATH=BLOCKS ...``: what it dropped),
    ``syncs`` (answers ``syncs N``)."""
    for line in stdin:
        command = line.strip()
        if command == "cut":
            dropped = " ".join(f"{path}={n}" for path, n in sorted(fs.cut().items()))
            print(f"cut {dropped}".rstrip(), file=stdout, flush=True)
        elif command == "syncs":
            print(f"syncs {fs.syncs}", file=stdout, flush=True)


def main(argv: list[str]) -> int:
    from fuse import FUSE

    backing, mount = argv
    fs = _operations()(backing)
    threading.Thread(target=_control, args=(fs, sys.stdin, sys.stdout), daemon=True).start()
    # no direct_io: SQLite's -shm needs shared mmap, which FUSE allows only through the page cache
    FUSE(fs, mount, foreground=True, nothreads=False, big_writes=True, max_write=131072,
         attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="kairo-powercut")
    return 0


# --------------------------------------------------------------------------- the test side


class PowerCutMount:
    """The file system above, mounted at ``mount`` over ``backing`` by a child process."""

    def __init__(self, backing: Path, mount: Path, *, log_path: Path) -> None:
        self.backing, self.mount, self.log_path = backing, mount, log_path
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> PowerCutMount:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.powercut", str(self.backing), str(self.mount)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not self.mounted():
            if self.proc.poll() is not None:
                raise MountFailed(self.log_path.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.mount} not mounted after {MOUNT_TIMEOUT}s")
            time.sleep(0.02)
        return self

    def mounted(self) -> bool:
        """Whether the kernel's mount table lists the mount point (``os.path.ismount`` says no
        once the file system fails every call, after the cut)."""
        target = os.path.realpath(self.mount).replace(" ", "\\040")
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == target for line in mounts)

    def _ask(self, command: str) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def syncs(self) -> int:
        """How many fsync/fdatasync calls the file system has applied so far."""
        return int(self._ask("syncs").split()[1])

    def cut(self) -> dict[str, int]:
        """Drop every unsynced write, then unmount; returns the 4 KiB blocks dropped, by file
        (``/name`` under the mount). Kill whatever used the mount first: nothing written later
        reaches the disk anyway."""
        answer = self._ask("cut").split()
        assert answer[:1] == ["cut"], f"unexpected answer from the FUSE process: {answer}"
        dropped = {path: int(n) for path, n in (item.rsplit("=", 1) for item in answer[1:])}
        self.close()
        return dropped

    def close(self) -> None:
        """Unmount (lazily if still busy) and reap the process; safe to call twice."""
        if self.mounted():
            done = subprocess.run(["umount", str(self.mount)], capture_output=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
            if self.mounted():
                raise AssertionError(f"{self.mount} still mounted: {done.stderr.decode()!r}")
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


class MountFailed(RuntimeError):
    """The FUSE process exited before the mount appeared (its log tail is the message)."""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
