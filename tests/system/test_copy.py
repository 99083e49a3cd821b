"""``kairo-sidecar copy``: a store moved between SQLite and PostgreSQL, both directions,
idempotent, and resumed after a SIGKILL. Real SQLite files, a real PostgreSQL server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import DatabaseConfig
from sidecar.storage.copying import copy_store
from tests.conftest import ROOT, wait_until
from tests.support.postgres import Postgres
from tests.support.stores import Store, make_store


def _seed(store: Store, n: int) -> None:
    store.insert_events([{"id": f"c-{i:06d}", "topic": "kairo/copy", "type": f"kairo.t{i % 3}",
                          "source": "s", "payload": f'{{"i": {i}}}', "metadata": "{}",
                          "created_at": 1_000 + i, "received_at": 1_000 + i,
                          "correlation_id": f"corr-{i % 7}"} for i in range(n)])


def _extras(store: Store) -> None:
    store.execute("INSERT INTO dead_letters (topic, payload, payload_size, reason, received_at) "
                  "VALUES (?, ?, ?, ?, ?)", ("kairo/bad", b"\x00\xffnot json", 10, "not JSON", 5))
    store.execute("INSERT INTO kv_store (key, value, version, updated_at) VALUES (?, ?, ?, ?)",
                  ("site", '{"name": "pi-7"}', 3, 99))


def _events(store: Store) -> list[tuple[object, ...]]:
    return [tuple(r) for r in store.execute(
        "SELECT id, type, payload, correlation_id, created_at FROM events ORDER BY seq")]


def _normal(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Payloads as JSON values (JSONB reformats the text)."""
    return [(r[0], r[1], json.loads(r[2]) if isinstance(r[2], str) else r[2], r[3], r[4])
            for r in rows]


def test_copy_moves_a_store_to_postgres_and_back_idempotently(
        pg_server: Postgres, tmp_path: Path) -> None:
    """SQLite -> PostgreSQL -> a new SQLite file: the same events in the same order, the dead
    letter (bytes intact) and the kv entry; copying again adds nothing."""
    pi = make_store("sqlite", f"sqlite:///{tmp_path / 'pi.db'}")
    _seed(pi, 3000)
    _extras(pi)
    central = Store("postgres", DatabaseConfig(url=pg_server.fresh_database()))
    result = copy_store(pi.config, central.config, batch_size=500)
    assert (result.events, result.inserted, result.dead_letters, result.kv_written) == \
        (3000, 3000, 1, 1)
    assert _normal(_events(central)) == _normal(_events(pi))
    ((payload, reason),) = central.execute("SELECT payload, reason FROM dead_letters")
    assert (bytes(payload), reason) == (b"\x00\xffnot json", "not JSON")
    assert central.execute("SELECT key, version FROM kv_store") == [("site", 3)]

    again = copy_store(pi.config, central.config, batch_size=500)
    assert (again.events, again.inserted, again.dead_letters, again.kv_written) == (0, 0, 0, 0)
    assert central.count() == 3000 and central.count("dead_letters") == 1

    back = Store("sqlite", DatabaseConfig(url=f"sqlite:///{tmp_path / 'back.db'}"))
    copy_store(central.config, back.config, batch_size=700)
    assert _normal(_events(back)) == _normal(_events(pi))
    assert bytes(back.execute("SELECT payload FROM dead_letters")[0][0]) == b"\x00\xffnot json"
    ((key, value, version),) = back.execute("SELECT key, value, version FROM kv_store")
    assert (key, json.loads(value), version) == ("site", {"name": "pi-7"}, 3)


def test_copy_killed_mid_way_resumes_where_it_stopped(pg_server: Postgres, tmp_path: Path) -> None:
    """The copy command SIGKILLed after some batches committed, then run again: it says it
    resumed, and PostgreSQL holds every event exactly once, in source order."""
    n = 40_000
    pi = make_store("sqlite", f"sqlite:///{tmp_path / 'pi.db'}")
    _seed(pi, n)
    url = pg_server.fresh_database()
    central = Store("postgres", DatabaseConfig(url=url))
    command = [sys.executable, "-m", "sidecar", "copy", "--from", pi.url, "--to", url,
               "--batch-size", "100"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def copied() -> int:
        try:
            rows = central.execute("SELECT last_key FROM copy_progress")
        except Exception:  # not migrated yet
            return 0
        return int(rows[0][0]) if rows else 0

    try:
        wait_until(lambda: copied() >= 2000 or proc.poll() is not None, timeout=60,
                   message="2,000 events copied")
        assert proc.poll() is None, "the copy finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    assert 0 < central.count() < n
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resumed after source seq" in done.stdout
    ids = [r[0] for r in central.execute("SELECT id FROM events ORDER BY seq")]
    assert ids == [f"c-{i:06d}" for i in range(n)]


def test_copy_refuses_what_is_not_a_database_url(tmp_path: Path) -> None:
    """A --to that is no database URL is refused with exit 2, naming the option, the password
    masked; the same database on both sides too."""
    source = f"sqlite:///{tmp_path / 'pi.db'}"
    done = subprocess.run([sys.executable, "-m", "sidecar", "copy", "--from", source, "--to",
                           "mysql://kairo:s3cret@db/kairo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "--to" in done.stderr and "s3cret" not in done.stderr and "***" in done.stderr
    done = subprocess.run([sys.executable, "-m", "sidecar", "copy", "--from", source, "--to",
                           source], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "the same database" in done.stderr


class _Interrupted(Exception):
    """Stands for a Ctrl-C after the first committed batch."""


def test_copy_to_postgres_dead_letters_events_holding_nul_and_resumes_idempotently(
        pg_server: Postgres, tmp_path: Path) -> None:
    """Events holding U+0000 (a JSON \\u0000 escape, a NUL in a text column) become dead letters
    of the PostgreSQL target, counted as refused; the copy goes on, an interrupted run resumes
    and a third run adds nothing: each refused event is one dead letter, every other event once."""
    pi = make_store("sqlite", f"sqlite:///{tmp_path / 'pi.db'}")
    _seed(pi, 100)
    pi.execute("UPDATE events SET payload = ? WHERE id = 'c-000005'", ('{"s": "a\\u0000b"}',))
    pi.execute("UPDATE events SET source = ? WHERE id = 'c-000070'", ("s\x00x",))
    # an escaped backslash before u0000 is text, not a NUL: copied
    pi.execute("UPDATE events SET payload = ? WHERE id = 'c-000071'", ('{"s": "\\\\u0000"}',))
    central = Store("postgres", DatabaseConfig(url=pg_server.fresh_database()))

    def stop_after_first_batch(done: int, total: int) -> None:
        raise _Interrupted

    with pytest.raises(_Interrupted):
        copy_store(pi.config, central.config, batch_size=30, progress=stop_after_first_batch)
    assert central.count() == 29 and central.count("dead_letters") == 1
    rest = copy_store(pi.config, central.config, batch_size=30)
    assert (rest.resumed_after, rest.events, rest.inserted, rest.refused) == (30, 70, 69, 1)
    again = copy_store(pi.config, central.config, batch_size=30)
    assert (again.events, again.inserted, again.refused) == (0, 0, 0)

    ids = [r[0] for r in central.execute("SELECT id FROM events ORDER BY seq")]
    assert ids == [f"c-{i:06d}" for i in range(100) if i not in (5, 70)]
    letters = central.execute("SELECT topic, payload, reason FROM dead_letters ORDER BY id")
    assert [json.loads(bytes(p))["id"] for _, p, _ in letters] == ["c-000005", "c-000070"]
    assert all(r.startswith("storage refused the event: ") and "U+0000" in r
               for _, _, r in letters)
    assert "found in payload" in letters[0][2] and "found in source" in letters[1][2]
    assert json.loads(bytes(letters[0][1]))["payload"] == {"s": "a\x00b"}
