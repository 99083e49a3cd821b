"""Reading an ``strace -f -yy -xx`` log: were the database files synced before each PUBACK?

``strace_command`` builds the wrapper; ``check_acks`` walks the trace in order and, for every
write to the broker's socket that starts with an MQTT PUBACK (first byte 0x40), notes which of
the database files then held writes that no completed ``fsync``/``fdatasync`` of that file had
covered yet. A sync covers the writes issued before it started, and counts when it returns.

Which writes must be covered: the PUBACKs leave from paho's network thread, while the writer
thread (the one that writes the database files) hands them over and goes on to commit the next
batch. A PUBACK can only carry packet ids handed over before it is sent, and a hand-over wakes
the network thread with a write to paho's internal socket pair. So the writes that must be
synced when a PUBACK leaves are those the writer made before its latest hand-over (a socket
write by a thread that writes the database files; the PUBACK itself if that thread sends it).
Later writes belong to batches whose acks are not out yet.
"""

from __future__ import annotations

import bisect
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

WRITES = ("write", "writev", "pwrite64", "pwritev", "pwritev2")
SENDS = ("write", "writev", "sendto", "sendmsg", "send")
SYNCS = ("fsync", "fdatasync")
TRACED = sorted({*WRITES, *SENDS, *SYNCS})
PUBACK = 0x40

_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((\d+)<(.*?)>(?=[,)]| <unfinished)(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>.*=\s*(-?\d+)")
_RESULT = re.compile(r"\)\s*=\s*(-?\d+)")
_DATA = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
_HEX = re.compile(r"\\x([0-9a-f]{2})")


def strace_command(trace: Path) -> list[str] | None:
    """The wrapper that traces a command into ``trace``; None where strace is missing."""
    binary = shutil.which("strace")
    if binary is None:
        return None
    return [binary, "-f", "-yy", "-xx", "-s", "4", "-e", "trace=" + ",".join(TRACED),
            "-o", str(trace), "--"]


def _unhex(text: str) -> str:
    return _HEX.sub(lambda m: chr(int(m.group(1), 16)), text)


@dataclass
class AckCheck:
    """What ``check_acks`` found."""

    pubacks: int = 0  # writes to the broker socket starting with a PUBACK
    violations: list[str] = field(default_factory=list)  # one line per PUBACK sent too early
    syncs: dict[str, int] = field(default_factory=dict)  # completed syncs per database file
    writes: dict[str, int] = field(default_factory=dict)  # writes per database file


def check_acks(trace: Path, *, files: list[Path], broker_port: int) -> AckCheck:
    """Every PUBACK write to ``127.0.0.1:broker_port`` must find each of ``files`` synced."""
    names = {str(f) for f in files}
    peer = f"->127.0.0.1:{broker_port}]"
    writes: dict[str, list[int]] = {}  # file -> seq of each write, in order
    writer_pids: set[str] = set()  # threads that write the database files
    handoff = -1  # seq of the writer's latest socket write (its latest hand-over to paho)
    synced: dict[str, int] = {}
    in_sync: dict[str, tuple[str, int]] = {}  # pid -> (file, seq at entry) of an unfinished sync
    result = AckCheck()
    for seq, raw in enumerate(trace.read_text(errors="replace").splitlines()):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = m.groups()
        resumed = _RESUMED.match(rest)
        if resumed:
            name, ret = resumed.groups()
            pending = in_sync.pop(pid, None)
            if name in SYNCS and pending is not None and int(ret) == 0:
                path, started = pending
                synced[path] = max(synced.get(path, -1), started)
                result.syncs[path] = result.syncs.get(path, 0) + 1
            continue
        call = _CALL.match(rest)
        if not call:
            continue
        name, _fd, target, args = call.groups()
        target = _unhex(target)
        if target in names:
            if name in WRITES:
                writes.setdefault(target, []).append(seq)
                writer_pids.add(pid)
                result.writes[target] = result.writes.get(target, 0) + 1
            elif name in SYNCS:
                done = _RESULT.search(args)
                if done is None:  # <unfinished ...>: counts when it returns
                    in_sync[pid] = (target, seq)
                elif int(done.group(1)) == 0:
                    synced[target] = max(synced.get(target, -1), seq)
                    result.syncs[target] = result.syncs.get(target, 0) + 1
        elif name in SENDS and peer in target:
            data = _DATA.search(args)
            first = _unhex(data.group(1))[:1] if data else ""
            if first and ord(first) == PUBACK:
                result.pubacks += 1
                handed = seq if pid in writer_pids else handoff
                dirty = sorted(Path(f).name for f, seqs in writes.items()
                               if _last_before(seqs, handed) > synced.get(f, -1))
                if dirty:
                    result.violations.append(f"line {seq + 1}: PUBACK with unsynced {dirty}")
        elif name in SENDS and pid in writer_pids and target.startswith(("TCP:", "UNIX:", "socket:")):
            handoff = seq
    return result


def _last_before(seqs: list[int], limit: int) -> int:
    """The last of the sorted ``seqs`` below ``limit``; -1 if none."""
    i = bisect.bisect_left(seqs, limit)
    return seqs[i - 1] if i else -1
