"""The benchmark's events: 200-300-byte JSON Kairo envelopes on a spread of ``kairo/...`` topics.

Deterministic (seeded), so every variant of a scenario gets the very same messages. Ids are
random UUIDs (v4), the worst case for the unique ``id`` index; half the events carry a
correlation id (about 5 events per workflow), 30 % a trace id. For the 1,000,000-event scenarios
``seed_database`` writes the rows straight into SQLite with the writer's own INSERT (fast path,
no MQTT), after decoding each message exactly as the daemon does.
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

from sidecar.core.events import EVENT_COLUMNS, EventRow
from sidecar.ingest.decode import decode_message
from sidecar.storage import keys

# (topic, weight): sensors dominate, a few rare kinds (audit, alert) -- as on a real site.
TOPICS: tuple[tuple[str, int], ...] = (
    ("kairo/sensor/temp", 30), ("kairo/sensor/humidity", 20), ("kairo/sensor/power", 10),
    ("kairo/user/message", 10), ("kairo/user/presence", 5), ("kairo/door/open", 8),
    ("kairo/door/close", 8), ("kairo/workflow/step", 6), ("kairo/alert/raised", 2),
    ("kairo/audit/login", 1),
)
ROOMS = ("kitchen", "hall", "bedroom", "office", "garage", "attic", "cellar", "porch")
SOURCES = 50
BASE_TS = 1_790_000_000_000  # ms; seeded events are 10 ms apart from here
SPACING_MS = 10

_ENCODER = msgspec.json.Encoder()


class Message(NamedTuple):
    """One message: its number in the run, topic, JSON bytes and event id."""

    number: int
    topic: str
    payload: bytes
    id: str


def _cumulative() -> tuple[list[str], list[int]]:
    names = [t for t, _ in TOPICS]
    weights = [w for _, w in TOPICS]
    return names, weights


def make_messages(n: int, *, seed: int = 7, start: int = 0, now_ms: int | None = None,
                  spacing_ms: int = SPACING_MS, rich: bool = False) -> list[Message]:
    """``n`` messages; ``metadata.timestamp`` is ``now_ms`` (default: the seeded base time)
    plus ``spacing_ms`` per event. ``rich``: the fuller envelopes of issue 11 (~320 bytes: a
    schema version and site in the metadata, battery and signal strength in the payload)."""
    rnd = random.Random(seed * 1_000_003 + start)
    names, weights = _cumulative()
    base = BASE_TS if now_ms is None else now_ms
    correlation_pool = max(1, n // 10)
    out: list[Message] = []
    choices = rnd.choices(names, weights, k=n)
    for k in range(n):
        i = start + k
        topic = choices[k]
        kind = topic.split("/", 2)[1:]
        event_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        metadata: dict[str, object] = {"timestamp": base + i * spacing_ms, "origin": "bench"}
        if rnd.random() < 0.5:
            metadata["correlationId"] = f"wf-{seed}-{rnd.randrange(correlation_pool):07d}"
        if rnd.random() < 0.3:
            metadata["traceId"] = f"{rnd.getrandbits(128):032x}"
        if rich:
            metadata["schemaVersion"] = "1.2"
            metadata["site"] = f"home-{seed % 7:02d}"
        payload: dict[str, object] = {"room": ROOMS[i % len(ROOMS)], "n": i}
        if rich:
            payload["battery"] = rnd.randrange(20, 101)
            payload["rssi"] = -rnd.randrange(40, 90)
            payload["fw"] = f"2.{rnd.randrange(10)}.{rnd.randrange(20)}"
        if kind[0] == "sensor":
            payload["value"] = round(rnd.uniform(-10, 40), 2)
            payload["unit"] = {"temp": "C", "humidity": "%", "power": "W"}[kind[1]]
            payload["status"] = "ok"
        else:
            payload["text"] = "x" * rnd.randrange(10, 24)
        envelope = {"id": event_id, "type": topic.replace("/", "."),
                    "source": f"device-{rnd.randrange(SOURCES):03d}", "payload": payload,
                    "metadata": metadata}
        out.append(Message(i, topic, _ENCODER.encode(envelope), event_id))
    return out


def rows_for(messages: list[Message], *, received_at: int | None = None) -> list[EventRow]:
    """Decode ``messages`` exactly as the daemon does (the rows its writer would insert)."""
    rows = []
    for m in messages:
        at = m.number * SPACING_MS + BASE_TS if received_at is None else received_at
        row = decode_message(m.topic, m.payload, received_at=at, max_payload_bytes=262144)
        rows.append(row)
    return rows


def insert_sql() -> str:
    """The writer's INSERT (insert-or-ignore on the id), column for column."""
    return (f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(size, n - start)


def seed_database(path: Path, n: int, *, seed: int = 11, chunk: int = 50_000,
                  rich: bool = False) -> float:
    """Fast path: ``n`` events decoded like the daemon and inserted with the writer's SQL in
    one transaction per ``chunk`` (the database must be migrated). Returns the seconds taken.
    Ends with a TRUNCATE checkpoint, so the file is as a cleanly stopped daemon leaves it."""
    started = time.perf_counter()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    sql = insert_sql()
    for start, size in chunks(n, chunk):
        rows = rows_for(make_messages(size, seed=seed, start=start, rich=rich))
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, rows)
        cursor = con.cursor()  # their keys too, in the daemon's steps (``keys.KEYS_BATCH``)
        while keys.catch_up(cursor, limit=keys.KEYS_BATCH):
            pass
        con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.perf_counter() - started


def mean_size(messages: list[Message]) -> float:
    return sum(len(m.payload) for m in messages) / max(1, len(messages))
