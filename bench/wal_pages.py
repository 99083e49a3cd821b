"""What each commit writes: the WAL frames of small commits, by table and index.

``python -m bench.wal_pages BASE.db --events 1000 --batch 10 [--setup SQL ...]``

A copy of ``BASE.db`` (a migrated, seeded store: ``bench.commit_wear`` keeps one per schema in
``/tmp/kairo-wear``) takes ``--events`` new rich events through the real ``Writer``, exactly
``--batch`` per commit, with automatic checkpoints off; the WAL is then read frame by frame
(each frame: page number, commit marker) and every page is named with ``dbstat`` (the table or
index owning it), the pointer-map pages (``auto_vacuum``) and the free list. Printed: frames
per commit and distinct pages per commit, per owner. Each frame is one 4 KiB page written to
the WAL, and each distinct page once more at the checkpoint: this says where the bytes of
``bench.commit_wear`` go.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import struct
from collections import Counter
from pathlib import Path

from sidecar.config import DatabaseConfig
from sidecar.storage.db import migrate, open_database

from .commit_wear import push_through_writer, write_bytes
from .events import make_messages, rows_for
from .procs import settle


def _frames(wal: Path) -> list[list[int]]:
    """The page numbers of each commit's frames, commit by commit."""
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits: list[list[int]] = []
    current: list[int] = []
    for offset in range(32, len(data) - 24, 24 + page_size):
        page, commit_size = struct.unpack(">II", data[offset:offset + 8])
        if data[offset + 8:offset + 16] != salts:
            break  # a frame of the WAL's previous generation
        current.append(page)
        if commit_size:
            commits.append(current)
            current = []
    return commits


def _owners(path: Path) -> dict[int, str]:
    con = sqlite3.connect(path)
    try:
        owners = {int(p): str(n) for n, p in con.execute("SELECT name, pageno FROM dbstat")}
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        if con.execute("PRAGMA auto_vacuum").fetchone()[0]:
            step = page_size // 5 + 1
            for p in range(2, pages + 1, step):
                owners.setdefault(p, "(pointer map)")
    finally:
        con.close()
    return owners


def run(base: Path, events: int, batch: int, setup: list[str], work: Path, *,
        read_all: bool = False, drop: bool = False, keys_batch: int | None = None) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, work)
    if setup:
        con = sqlite3.connect(work, isolation_level=None)
        for sql in setup:
            con.execute(sql)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    settle(work)
    if read_all:  # as the daemon's start-up check does: every page read, in large folios
        con = sqlite3.connect(work)
        con.execute("PRAGMA quick_check").fetchall()
        con.close()
        if drop:
            settle(work)
    rows = rows_for(make_messages(events, seed=23, start=2_000_000, rich=True))
    db = open_database(DatabaseConfig(url=f"sqlite:///{work}"))
    migrate(db)
    db._pragmas = [*db._pragmas, ("wal_autocheckpoint", 0)]  # type: ignore[attr-defined]
    db.execute_sql("PRAGMA wal_autocheckpoint = 0")
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    to_wal = push_through_writer(db, list(rows), batch, keys_batch=keys_batch).write_bytes
    wal_copy = work.with_suffix(".wal-copy")
    shutil.copyfile(f"{work}-wal", wal_copy)
    copied = write_bytes()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    written = to_wal + write_bytes() - copied
    commits = [c for c in _frames(wal_copy) if len(c) > 0]
    owners = _owners(work)
    frames: Counter[str] = Counter()
    distinct: Counter[str] = Counter()
    for commit in commits:
        for page in commit:
            frames[owners.get(page, "(free list / other)")] += 1
        for page in set(commit):
            distinct[owners.get(page, "(free list / other)")] += 1
    n = len(commits)
    total_frames = sum(frames.values())
    print(f"{events} events, {batch} per commit, {n} commits; setup: {setup or 'none'}")
    print(f"WAL frames per commit {total_frames / n:.1f} (distinct pages {sum(distinct.values()) / n:.1f}); "
          f"WAL bytes per event {total_frames * 4120 / events:,.0f}; distinct pages over the run "
          f"{len({p for c in commits for p in c})}")
    print(f"write_bytes per event (the run + a TRUNCATE checkpoint): {written / events:,.0f} "
          f"(the run, WAL: {to_wal / events:,.0f}; the checkpoint: {(written - to_wal) / events:,.0f}"
          f" for {len({p for c in commits for p in c})} distinct pages = "
          f"{len({p for c in commits for p in c}) * 4096 / events:,.0f} B/event)")
    print("| owner | frames per commit | distinct pages per commit |")
    print("|---|---:|---:|")
    for name, count in frames.most_common():
        print(f"| {name} | {count / n:.2f} | {distinct[name] / n:.2f} |")
    wal_copy.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--setup", action="append", default=[], metavar="SQL")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wear2/wal-pages.db"))
    parser.add_argument("--keys-batch", type=int, default=0,
                        help="events between two event_keys catch-ups (default: the writer's)")
    parser.add_argument("--read-all", action="store_true",
                        help="read every page first (PRAGMA quick_check, as start-up does)")
    parser.add_argument("--drop", action="store_true",
                        help="with --read-all: then drop the file from the page cache")
    args = parser.parse_args()
    args.work.parent.mkdir(parents=True, exist_ok=True)
    run(args.base, args.events, args.batch, args.setup, args.work, read_all=args.read_all,
        drop=args.drop, keys_batch=args.keys_batch or None)


if __name__ == "__main__":
    main()
