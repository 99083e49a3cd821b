"""Full-text search (issue 14): request latency over MQTT at 1,000,000 events, and the SD-card
bytes the index adds per event at small commits (index against no index, same run).

    python -m bench.search latency [--events 1000000] [--rounds 200] [--dir /tmp/kairo-search]
    python -m bench.search wear [--base-events 200000] [--events 3000] [--batch 50] [--rounds 2]
        [--merge 16:64 ...]

Events carry text: ``text`` of 4-14 words drawn (Zipf, s = 1.1) from a vocabulary of 5,000
made-up words and a few real ones, a room, a status word, a number (``make_text_messages``).

*latency*: a store of ``--events`` such events (built once in ``--dir`` under a name carrying the
schema version, then reused), search on and every event indexed (``search.backfill_all``; its
rate and the file growth are printed), an in-process sidecar with ``[search] enabled`` on a
loopback Mosquitto, and ``--rounds`` round trips per kind of search through
``SidecarClient.search`` (MQTT 5): a rare word, a middling word, a common word (ranked: bm25 of
every match), a prefix, a phrase, the common word newest first, with a type filter and with a
time range; p50 and p99 in ms.

*wear*: two stores of ``--base-events`` events, one with search off, one with search on and
indexed; each copied afresh per measurement (off, on, on, off, ... ``--rounds`` pairs), then a
child process pushes ``--events`` new events through the real ``Writer``, ``--batch`` per
commit (50: 10 ev/s at the 5 s flush window), ends with a TRUNCATE checkpoint and reports
``write_bytes`` (``bench.commit_wear``). Run heavy: ``flock /tmp/kairo-heavy.lock ...``.

*merges* (``python -m bench.search merges --variants 0:16,0:64``): WAL frames per commit under
FTS5 merge settings, to see what of the index's writes are merges (``merges``' docstring).

*merge-latency* (``python -m bench.search merge-latency --variants 4:16,16:64``): what those
settings cost searches after a run of small commits (``merge_latency``' docstring).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from sidecar.config import DatabaseConfig, LogConfig, SearchConfig
from sidecar.logs import configure_logging
from sidecar.storage import keys, search
from sidecar.storage.db import migrate, open_database

from .commit_wear import _schema_version, push_through_writer, write_bytes
from .events import BASE_TS, SPACING_MS, Message, insert_sql, mean_size, rows_for
from .harness import time_calls
from .procs import settle

REAL = ("boiler", "kettle", "pressure", "garage", "door", "window", "heating", "alarm", "battery",
        "water", "leak", "smoke", "motion", "light", "camera", "timeout", "gateway", "restart")
KINDS = (("kairo.user.message", 40), ("kairo.alert.raised", 10), ("kairo.workflow.step", 20),
         ("kairo.device.log", 30))
ROOMS = ("kitchen", "hall", "bedroom", "office", "garage", "attic", "cellar", "porch")
_ENCODER = msgspec.json.Encoder()


def vocabulary() -> list[str]:
    """5,000 made-up words (syllable pairs and triples) with the real ones spread among the
    ranks: ``REAL[i]`` at rank ``7 + 150 i`` (common ones first, then ever rarer)."""
    rnd = random.Random(3)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    words: list[str] = []
    seen = set(REAL)
    while len(words) < 5000:
        word = "".join(rnd.choice(syllables) for _ in range(rnd.choice((2, 2, 3))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    for i, word in enumerate(REAL):
        words.insert(7 + 150 * i, word)
    return words


@functools.cache
def vocabulary_cached() -> list[str]:
    return vocabulary()


def make_text_messages(n: int, *, seed: int = 7, start: int = 0) -> list[Message]:
    rnd = random.Random(seed * 1_000_003 + start)
    words = vocabulary_cached()
    cumulative = list(itertools.accumulate(1 / (r + 1) ** 1.1 for r in range(len(words))))
    kinds = [k for k, _ in KINDS]
    kind_weights = list(itertools.accumulate(w for _, w in KINDS))
    out = []
    for k in range(n):
        i = start + k
        kind = rnd.choices(kinds, cum_weights=kind_weights)[0]
        text = " ".join(rnd.choices(words, cum_weights=cumulative, k=rnd.randrange(4, 15)))
        event_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        envelope = {"id": event_id, "type": kind, "source": f"device-{rnd.randrange(50):03d}",
                    "payload": {"text": text, "room": ROOMS[i % len(ROOMS)],
                                "status": rnd.choice(("ok", "warn", "fail")), "n": i},
                    "metadata": {"timestamp": BASE_TS + i * SPACING_MS, "origin": "bench"}}
        out.append(Message(i, "kairo/" + kind.split(".", 1)[1].replace(".", "/"),
                           _ENCODER.encode(envelope), event_id))
    return out


def seed_text(path: Path, n: int, *, chunk: int = 50_000) -> None:
    """``n`` text events into the migrated ``path`` with the writer's INSERT (keys caught up
    per ``KEYS_BATCH`` as the daemon does), then a TRUNCATE checkpoint."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    for start in range(0, n, chunk):
        rows = rows_for(make_text_messages(min(chunk, n - start), start=start))
        con.execute("BEGIN IMMEDIATE")
        con.executemany(insert_sql(), rows)
        while keys.catch_up(con.cursor(), limit=keys.KEYS_BATCH):
            pass
        con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def base_store(directory: Path, n: int, *, indexed: bool, prefix: str = "") -> Path:
    """The ``n``-event text store for today's schema, search on and indexed or off (built
    once, then reused); prints how long indexing took and what it added to the file.
    ``prefix``: ``event_search`` made with FTS5's ``prefix=`` option (e.g. ``'3 4'``)."""
    tag = f"-prefix{prefix.replace(' ', '_')}" if prefix else ""
    name = f"search-base-{n}-{'on' if indexed else 'off'}{tag}-{_schema_version()}.db"
    path = directory / name
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    plain = base_store(directory, n, indexed=False) if indexed else None
    _fresh(tmp)
    if plain is not None:
        shutil.copyfile(plain, tmp)
    else:
        db = open_database(DatabaseConfig(url=f"sqlite:///{tmp}"))
        migrate(db)
        db.close()
        seed_text(tmp, n)
    if indexed:
        before = tmp.stat().st_size
        db = open_database(DatabaseConfig(url=f"sqlite:///{tmp}"))
        search.sync(db, SearchConfig(enabled=True))
        if prefix:
            _with_prefix(db, prefix)
        started = time.perf_counter()
        search.backfill_all(db, batch=50_000)
        seconds = time.perf_counter() - started
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        grown = tmp.stat().st_size - before
        print(f"backfill of {n:,} events: {seconds:.1f} s ({n / seconds:,.0f} events/s); the "
              f"file grew {grown / 1e6:,.1f} MB ({grown / n:,.0f} B/event; {before / 1e6:,.1f} "
              "MB before)", flush=True)
    tmp.rename(path)
    return path


def _with_prefix(db: Any, prefix: str) -> None:
    """``event_search`` made again, empty, as ``search.sync`` makes it plus ``prefix=``."""
    with db.atomic():
        cursor = db.cursor()
        sql = cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'event_search'").fetchone()[0]
        cursor.execute("DROP TABLE event_search")
        cursor.execute(sql.replace("fts5(type, source, body, ",
                                   f"fts5(type, source, body, prefix='{prefix}', "))
        for option, value in search.MERGE:
            cursor.execute("INSERT INTO event_search (event_search, rank) VALUES (?, ?)",
                           (option, value))


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def latency(args: argparse.Namespace) -> None:
    from sidecar.client import SidecarClient

    from .inprocess import sidecar_thread

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    base = base_store(directory, args.events, indexed=True, prefix=args.prefix)
    words = vocabulary()
    counts = _document_counts(base, [words[5], words[300], words[2500], "boiler", "pressure"])
    env = {"KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{base}", "KAIRO_SIDECAR_SEARCH__ENABLED":
           "true", "KAIRO_SIDECAR_LOG__LEVEL": "warning",
           "KAIRO_SIDECAR_SEARCH__RANK_WINDOW": str(args.rank_window)}
    mid = BASE_TS + args.events // 2 * SPACING_MS
    rare, middling, common = words[2500], words[300], words[5]
    with (sidecar_thread(directory / "broker", env, extra_conf="set_tcp_nodelay true\n")
          as (broker, _), SidecarClient(broker.host, broker.port, timeout=60) as client):
        cases: list[tuple[str, Callable[[], Any]]] = [
            (f"rare word ({counts[rare]:,} matches), ranked", lambda: client.search(rare)),
            (f"middling word ({counts[middling]:,}), ranked",
             lambda: client.search(middling)),
            (f"'boiler' ({counts['boiler']:,}), ranked", lambda: client.search("boiler")),
            ("prefix 'boil*', ranked", lambda: client.search("boil*")),
            ("phrase '\"boiler pressure\"', ranked",
             lambda: client.search('"boiler pressure"')),
            (f"'boiler' AND '{middling}', ranked",
             lambda: client.search(f"boiler {middling}")),
            (f"common word ({counts[common]:,}), newest first",
             lambda: client.search(common, order="desc")),
            ("'boiler', newest first, type kairo.alert.*",
             lambda: client.search("boiler", order="desc", type="kairo.alert.*")),
            ("'boiler', ranked, a 1 % time range",
             lambda: client.search("boiler", since=mid,
                                   until=mid + args.events // 100 * SPACING_MS)),
            (f"common word ({counts[common]:,}), ranked", lambda: client.search(common)),
        ]
        print(f"{args.events:,} events, search on (unicode61), {args.rounds} round trips each "
              f"over MQTT 5 (ms), 20 hits per answer, rank_window {args.rank_window}")
        print("| search | p50 | p99 |\n|---|---:|---:|")
        only = [w for w in args.only.split(",") if w]
        for name, fn in cases:
            if only and not any(w in name for w in only):
                continue
            fn()  # warm
            p50, p99 = _percentiles(time_calls(fn, args.rounds))
            print(f"| {name} | {p50:.1f} | {p99:.1f} |", flush=True)


def _document_counts(path: Path, words: list[str]) -> dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        con.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, event_search, row)")
        return {w: (con.execute("SELECT doc FROM temp.v WHERE term = ?", (w,)).fetchone()
                    or (0,))[0] for w in words}
    finally:
        con.close()


def measure(path: Path, events: int, batch: int, start: int) -> dict[str, float]:
    """In this (child) process: ``events`` new text events through the Writer, ``batch`` per
    commit, then a TRUNCATE checkpoint; the bytes this process dirtied per event."""
    messages = make_text_messages(events, seed=23, start=start)
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    pushed = push_through_writer(db, list(rows_for(messages)), batch)
    before = write_bytes()
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    written = pushed.write_bytes + write_bytes() - before
    return {"bytes_per_event": written / events, "event_json": mean_size(messages),
            "events_per_s": events / pushed.seconds}


def wear(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    bases = {"off": base_store(directory, args.base_events, indexed=False),
             "on": base_store(directory, args.base_events, indexed=True, prefix=args.prefix)}
    variants = ["off", "on", *(f"on {m}" for m in args.merge)]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    runs: list[str] = []
    order: list[str] = []
    for r in range(args.rounds):
        order += variants if r % 2 == 0 else variants[::-1]
    for variant in order:
        work = directory / "search-wear-work.db"
        _fresh(work)
        shutil.copyfile(bases[variant.split()[0]], work)
        setup = list(args.setup) if variant.startswith("on") else []
        if " " in variant:  # automerge:crisismerge of event_search
            automerge, crisismerge = variant.split()[1].split(":")
            setup += [f"INSERT INTO event_search (event_search, rank) VALUES ('automerge', "
                      f"{int(automerge)})", "INSERT INTO event_search (event_search, rank) "
                      f"VALUES ('crisismerge', {int(crisismerge)})"]
        if setup:
            con = sqlite3.connect(work, isolation_level=None)
            for sql in setup:
                con.execute(sql)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
        settle(work)
        out = subprocess.run([sys.executable, "-m", "bench.search", "child", str(work),
                              str(args.events), str(args.batch), str(args.base_events)],
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        results[variant].append(result)
        runs.append(f"{variant} {result['bytes_per_event']:,.0f}")
        _fresh(work)
    json_size = results["off"][0]["event_json"]
    print(f"{args.base_events:,} text events stored, {args.events:,} new ones through the "
          f"Writer, {args.batch} per commit, {args.rounds} rounds each (medians); event JSON "
          f"{json_size:.0f} B; write_bytes incl. the final checkpoint")
    print("| search | bytes written per event | x the event JSON | events/s (writer) |")
    print("|---|---:|---:|---:|")
    medians = {}
    for variant in variants:
        b = statistics.median(r["bytes_per_event"] for r in results[variant])
        rate = statistics.median(r["events_per_s"] for r in results[variant])
        medians[variant] = b
        print(f"| {variant} | {b:,.0f} | {b / json_size:.1f}x | {rate:,.0f} |")
    for variant in variants[1:]:
        print(f"{variant} / off: {medians[variant] / medians['off']:.2f}x bytes per event "
              f"(+{medians[variant] - medians['off']:,.0f} B)")
    print("each run in order: " + ", ".join(runs))


def merges(args: argparse.Namespace) -> None:
    """WAL frames per commit of ``--commits`` commits of ``--batch`` text events (one multi-row
    INSERT each, raw SQLite, automatic checkpoints off) on copies of the indexed store, for
    FTS5 merge settings ``automerge:crisismerge`` (and the store with search off)."""
    directory = Path(args.dir)
    base = base_store(directory, args.base_events, indexed=True)
    rows = rows_for(make_text_messages(args.commits * args.batch, seed=23, start=10**7))
    head, values = insert_sql().split(" VALUES ")
    print(f"{args.base_events:,} text events indexed; {args.commits} commits of {args.batch}")
    print("| FTS5 automerge, crisismerge | WAL frames per commit | the largest commit (frames) "
          "| commits over 10x the mean | the slowest commit ms |\n|---|---:|---:|---:|---:|")
    for variant in ["off", "4:16", *args.variants.split(",")]:
        work = directory / "search-merge-work.db"
        _fresh(work)
        shutil.copyfile(base, work)
        con = sqlite3.connect(work, isolation_level=None)
        con.execute("PRAGMA journal_mode=wal")
        con.execute("PRAGMA wal_autocheckpoint=0")
        if variant == "off":
            con.execute("DROP TRIGGER events_search_insert")
        else:
            automerge, crisismerge = variant.split(":")
            con.execute("INSERT INTO event_search (event_search, rank) VALUES ('automerge', ?)",
                        (int(automerge),))
            con.execute("INSERT INTO event_search (event_search, rank) "
                        "VALUES ('crisismerge', ?)", (int(crisismerge),))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = Path(f"{work}-wal")
        sizes: list[int] = []  # WAL frames each commit appended
        slowest = 0.0
        for c in range(args.commits):
            chunk = rows[c * args.batch:(c + 1) * args.batch]
            started = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute(f"{head} VALUES {', '.join([values] * len(chunk))}",
                        [v for row in chunk for v in row])
            con.execute("COMMIT")
            slowest = max(slowest, time.perf_counter() - started)
            sizes.append(wal.stat().st_size // (4096 + 24) - sum(sizes))
        frames = sum(sizes)
        con.close()
        _fresh(work)
        mean = frames / args.commits
        print(f"| {'search off' if variant == 'off' else variant} | {mean:.1f} | {max(sizes):,} "
              f"| {sum(1 for n in sizes if n > 10 * mean)} | {slowest * 1000:.0f} |", flush=True)


def merge_latency(args: argparse.Namespace) -> None:
    """Search cost of FTS5 merge settings: a copy of the ``--events-base`` indexed store per
    ``automerge:crisismerge`` variant, ``--events`` new events through the real ``Writer``
    (``--batch`` per commit) under it, then ``search.matches`` in process (no MQTT), ``--rounds``
    per kind, the copies interleaved; p50 / p99 ms."""
    from sidecar.core.search_query import to_fts
    from sidecar.storage.queries import Conditions

    directory = Path(args.dir)
    base = base_store(directory, args.base_events, indexed=True)
    variants = args.variants.split(",")
    words = vocabulary()
    kinds = [("rare word, ranked", words[2500], "rank"),
             ("middling word, ranked", words[300], "rank"), ("'boiler', ranked", "boiler", "rank"),
             ("prefix 'boil*', ranked", "boil*", "rank"),
             ("phrase, ranked", '"boiler pressure"', "rank"),
             ("common word, newest first", words[5], "desc")]
    rows = list(rows_for(make_text_messages(args.events, seed=23, start=10**7)))
    dbs: dict[str, Any] = {}
    for variant in variants:
        work = directory / f"search-mergelat-{variant.replace(':', '_')}.db"
        _fresh(work)
        shutil.copyfile(base, work)
        con = sqlite3.connect(work, isolation_level=None)
        for option, value in zip(("automerge", "crisismerge"), variant.split(":"), strict=True):
            con.execute("INSERT INTO event_search (event_search, rank) VALUES (?, ?)",
                        (option, int(value)))
        con.close()
        db = open_database(DatabaseConfig(url=f"sqlite:///{work}"))
        pushed = push_through_writer(db, rows, args.batch)
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        segments = db.execute_sql("SELECT count(DISTINCT segid) FROM event_search_idx").fetchone()[0]
        print(f"{variant}: {args.events:,} events through the Writer in {pushed.seconds:.1f} s; "
              f"{segments} segments", flush=True)
        dbs[variant] = db
    print("| search | " + " | ".join(f"{v} p50 / p99 ms" for v in variants) + " |")
    print("|---|" + "---:|" * len(variants))
    try:
        for name, text, order in kinds:
            fts = to_fts(text)
            times: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(args.rounds + 1):  # the first round warms
                for variant in variants:
                    started = time.perf_counter()
                    search.matches(dbs[variant], fts, Conditions((), None), order=order, limit=20,
                                   after=None, rank_window=2000)
                    if r:
                        times[variant].append((time.perf_counter() - started) * 1000)
            cells = ["{:.1f} / {:.1f}".format(*_percentiles(times[v])) for v in variants]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    finally:
        for variant, db in dbs.items():
            db.close()
            _fresh(directory / f"search-mergelat-{variant.replace(':', '_')}.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--events", type=int, default=1_000_000)
    lat.add_argument("--rounds", type=int, default=200)
    lat.add_argument("--dir", default="/tmp/kairo-search")
    lat.add_argument("--rank-window", type=int, default=2000, help="[search] rank_window")
    lat.add_argument("--prefix", default="", help="event_search with FTS5 prefix= (e.g. '4')")
    lat.add_argument("--only", default="", help="run only the kinds whose name holds one of "
                                                "these comma-separated words")
    w = sub.add_parser("wear")
    w.add_argument("--base-events", type=int, default=200_000)
    w.add_argument("--events", type=int, default=3000)
    w.add_argument("--batch", type=int, default=50)
    w.add_argument("--rounds", type=int, default=2)
    w.add_argument("--dir", default="/tmp/kairo-search")
    w.add_argument("--setup", action="append", default=[], metavar="SQL",
                   help="run on each copy of the indexed store before measuring (a variant: "
                        "an FTS5 option); not counted")
    w.add_argument("--prefix", default="", help="the indexed store with FTS5 prefix= (e.g. '4')")
    w.add_argument("--merge", action="append", default=[], metavar="AUTOMERGE:CRISISMERGE",
                   help="also measure the indexed store with these event_search merge "
                        "settings (repeatable; 'on' keeps the store's own)")
    m = sub.add_parser("merges")
    m.add_argument("--base-events", type=int, default=200_000)
    m.add_argument("--commits", type=int, default=300)
    m.add_argument("--batch", type=int, default=50)
    m.add_argument("--variants", default="0:16,0:64,8:16", help="automerge:crisismerge,...")
    m.add_argument("--dir", default="/tmp/kairo-search")
    ml = sub.add_parser("merge-latency")
    ml.add_argument("--base-events", type=int, default=1_000_000)
    ml.add_argument("--events", type=int, default=20_000)
    ml.add_argument("--batch", type=int, default=50)
    ml.add_argument("--rounds", type=int, default=40)
    ml.add_argument("--variants", default="4:16,16:64", help="automerge:crisismerge,...")
    ml.add_argument("--dir", default="/tmp/kairo-search")
    child = sub.add_parser("child")
    child.add_argument("path")
    child.add_argument("events", type=int)
    child.add_argument("batch", type=int)
    child.add_argument("start", type=int)
    args = parser.parse_args()
    configure_logging(LogConfig(level="warning", format="console"))
    if args.what == "latency":
        latency(args)
    elif args.what == "wear":
        wear(args)
    elif args.what == "merges":
        merges(args)
    elif args.what == "merge-latency":
        merge_latency(args)
    else:
        print(json.dumps(measure(Path(args.path), args.events, args.batch, args.start)))


if __name__ == "__main__":
    main()
