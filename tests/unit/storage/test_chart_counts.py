"""The web console's chart counts (``Reader.counts_by_bucket``) and the store summary, on a real
SQLite file and a real PostgreSQL database: every event in its bucket once, whatever the
statement windows a bucket is split into."""

from __future__ import annotations

import json

from sidecar.storage.reads import COUNT_WINDOW_MS, Reader, open_reader
from tests.support.stores import Store

SINCE = 1_700_000_000_000
HOUR = 3_600_000


def test_counts_by_bucket_put_each_event_in_its_bucket_once(any_store: Store) -> None:
    """Events on both sides of every window and bucket edge, before ``since`` and at ``until``:
    the counts per (bucket, type) are those of a plain count, hour buckets split in windows."""
    assert HOUR // COUNT_WINDOW_MS > 1  # the hour buckets are read in several statements
    offsets = [-1, 0, 1, COUNT_WINDOW_MS - 1, COUNT_WINDOW_MS, 2 * COUNT_WINDOW_MS + 7,
               HOUR - 1, HOUR, HOUR + 1, 2 * HOUR + COUNT_WINDOW_MS, 3 * HOUR - 1, 3 * HOUR]
    rows = []
    for k, offset in enumerate(offsets):
        for kind in ("a.one", "b.two")[: 1 + k % 2]:
            rows.append({"id": f"e{k}-{kind}", "topic": "kairo/x", "type": kind, "source": "s",
                         "payload": json.dumps({}), "metadata": json.dumps({}),
                         "created_at": SINCE + offset, "received_at": SINCE + offset})
    any_store.insert_events(rows)
    expected: dict[tuple[int, str], int] = {}
    for row in rows:
        offset = row["created_at"] - SINCE
        if 0 <= offset < 3 * HOUR:
            key = (offset // HOUR, row["type"])
            expected[key] = expected.get(key, 0) + 1
    reader = Reader(open_reader(any_store.config))
    try:
        got = reader.counts_by_bucket(since=SINCE, until=SINCE + 3 * HOUR, bucket_ms=HOUR)
        assert {(b, t): n for b, t, n in got} == expected
        assert len(got) == len(expected)
        minutes = reader.counts_by_bucket(since=SINCE, until=SINCE + 3 * HOUR, bucket_ms=60_000)
        assert sum(n for *_, n in minutes) == sum(expected.values())
        assert reader.summary() == (len(rows), SINCE - 1, SINCE + 3 * HOUR)
    finally:
        reader.close()
