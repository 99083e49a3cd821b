"""One paced run of the daemon on a big store, its writes attributed to files (issue 11).

``python -m bench.wear_trace --rate 10 --seconds 120 [--seed 200] [--store PATH]``

The wear scenario's daemon run (``bench.wear``: the daemon at its default settings on a fsynced,
cache-dropped copy of a 1,000,000-event store, a paced QoS 1 publisher, a clean stop), once,
with ``strace -f -y`` on its ``pwrite64``/``write``/``fsync``/``fdatasync`` calls from
``sidecar_ready`` to the exit. Printed: ``write_bytes`` per event (what the card is sent: whole
pages, counted again when a page cleaned by an fsync or the kernel's writeback is dirtied again)
next to ``wchar`` (the bytes handed to the kernel), and per file the bytes written and the
distinct 4 KiB pages touched, per event, with the calls per file. The store is seeded once into
``--store`` (``wear.seeded_sidecar_db``, the schema of this tree) and reused.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from . import wear
from .ingest import Env
from .procs import CommitWatcher, Sidecar, proc_io

_CALL = re.compile(r"^\d+\s+(pwrite64|write|fsync|fdatasync)\((\d+)<([^>]*)>"
                   r"(?:, .*?, (\d+)(?:, (\d+))?)?\)\s+=\s+(-?\d+)")


def main() -> None:
    from tests.support.broker import start_broker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=200, help="the messages (wear uses 200, 201)")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the store")
    parser.add_argument("--store", type=Path, default=Path("/tmp/kairo-wear-trace/seed.db"))
    args = parser.parse_args()
    if not args.store.exists():
        args.store.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.store.with_suffix(".tmp")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        wear.seeded_sidecar_db(tmp, args.events)
        tmp.rename(args.store)
    root = Path(tempfile.mkdtemp(prefix="kairo-wear-trace-"))
    broker = start_broker(root / "broker",
                          extra_conf="set_tcp_nodelay true\nmax_inflight_messages 5000\n")
    try:
        env = Env(port=broker.port, broker_pid=0, root=root)
        work = env.workdir("wear")
        db = wear._copy(args.store, work, "kairo.db")
        pace = wear.Pace(args.rate, args.seconds)
        messages = wear._paced_messages(pace, args.seed)
        sc = Sidecar(work, env.port, env.client_id("wear"))
        sc.start()
        sc.wait_log("sidecar_ready")
        at_ready = proc_io(sc.pid)
        trace = work / "strace.txt"
        tracer = subprocess.Popen(
            ["strace", "-f", "-y", "-e", "trace=pwrite64,write,fsync,fdatasync", "-o", str(trace),
             "-p", str(sc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)  # attached
        watcher = CommitWatcher(db)
        seconds = wear._send_paced(env, messages, pace.rate)
        watcher.wait_for(args.events + len(messages), timeout=120, alive=sc.proc)
        at_exit = wear._stop(sc)
        watcher.close()
        tracer.wait(60)
    finally:
        broker.close()
    m = wear._measured(messages, at_exit, at_ready, seconds, None)
    n = len(messages)
    print(f"{pace.name} on {args.events:,} events: write_bytes {m['bytes_per_event']:,.0f} B/event "
          f"= {m['x_json']:.1f}x the event JSON; wchar {m['wchar_per_event']:,.0f} B/event")
    written: collections.Counter[str] = collections.Counter()
    pages: dict[str, set[int]] = collections.defaultdict(set)
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in trace.read_text(errors="replace").splitlines():
        found = _CALL.match(line)
        if not found:
            continue
        call, _fd, path, _size, offset, result = found.groups()
        name = os.path.basename(path)
        calls[(name, call)] += 1
        if call == "pwrite64" and int(result) > 0 and offset is not None:
            written[name] += int(result)
            first, last = int(offset) // 4096, (int(offset) + int(result) - 1) // 4096
            pages[name].update(range(first, last + 1))
    print("| file | bytes written per event | distinct 4 KiB pages, bytes per event |")
    print("|---|---:|---:|")
    for name, size in written.most_common():
        print(f"| {name} | {size / n:,.0f} | {len(pages[name]) * 4096 / n:,.0f} |")
    print("calls: " + ", ".join(f"{call} {name} {count}"
                                for (name, call), count in sorted(calls.items())))


if __name__ == "__main__":
    main()
