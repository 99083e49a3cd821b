"""The writer's throughput at each ``[database] synchronous`` level, as ratios to NORMAL.

Usage: python -m bench.sync_levels [--events 20000] [--rounds 3] [--batch-sizes 500,20]
                                    [--dir PATH]

Runs the real ``sidecar.writer.Writer`` (one transaction per batch, insert-or-ignore, acks after
commit) on fresh files in ``--dir`` (default: a temporary directory under the current one, so
the file system is the one the daemon would use: run it on the Pi's SD card, not on tmpfs).
Each round runs every level once, in a rotated order (OFF NORMAL FULL EXTRA, then NORMAL FULL
EXTRA OFF, ...), so machine noise hits every level alike; the report gives the median events/s
and the ratio to NORMAL from the same run. Full batches (500) are the daemon under load; small
batches (20) are a trickle, where the per-commit fsync of FULL/EXTRA dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

from sidecar.config import DatabaseConfig, LogConfig
from sidecar.core.events import EventRow, now_ms
from sidecar.ingest.decode import decode_message
from sidecar.logs import configure_logging
from sidecar.storage.db import migrate, open_database

from .commit_wear import push_through_writer

LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


def make_rows(n: int) -> list[EventRow]:
    """~300-byte Kairo envelopes, decoded once (decoding is not what is measured)."""
    rows = []
    for i in range(n):
        body = (f'{{"id": "bench-{i:08d}", "type": "kairo.sensor.temp", "source": "bench", '
                f'"payload": {{"i": {i}, "value": {i * 0.37:.2f}, "unit": "C", "text": "{"x" * 120}"}}, '
                f'"metadata": {{"timestamp": {1_790_000_000_000 + i}, "correlationId": "wf-{i % 500}"}}}}')
        row = decode_message("kairo/sensor/temp", body.encode(), received_at=now_ms(),
                             max_payload_bytes=65536)
        assert isinstance(row, EventRow)
        rows.append(row)
    return rows


def run_once(path: Path, level: str, rows: list[EventRow], batch_size: int) -> float:
    """Seconds for the writer to commit and ack every row, queued up front."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}", synchronous=level))  # type: ignore[arg-type]
    migrate(db)
    elapsed = push_through_writer(db, rows, batch_size).seconds
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run at batch >= 100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="500,20")
    parser.add_argument("--dir", default=".", help="where the test files go (default: here)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    configure_logging(LogConfig(level="error", format="console"))
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kairo-bench-", dir=args.dir) as tmp:
        for size in sizes:
            n = args.events if size >= 100 else max(size * 50, args.events // 10)
            rows = make_rows(n)
            times: dict[str, list[float]] = {level: [] for level in LEVELS}
            for r in range(args.rounds):
                order = LEVELS[r % 4:] + LEVELS[:r % 4]
                for level in order:
                    path = Path(tmp) / f"b{size}-r{r}-{level}.db"
                    times[level].append(run_once(path, level, rows, size))
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
            results[f"{size}:{n}"] = times
    print(f"{platform.machine()} {platform.system()} {os.cpu_count()} CPUs, files in "
          f"{os.path.abspath(args.dir)}, {args.rounds} rounds (median)")
    for key, times in results.items():
        size, n = (int(x) for x in key.split(":"))
        base = statistics.median(times["NORMAL"])
        print(f"\nbatch_size {size}, {n} events ({n // size} commits)")
        print("| synchronous | events/s | commits/s | throughput vs NORMAL |")
        print("|---|---:|---:|---:|")
        for level in LEVELS:
            med = statistics.median(times[level])
            print(f"| {level} | {n / med:,.0f} | {n / size / med:,.0f} | {base / med:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
