"""Retention: the policy, purges by age, count, size and per-type rule on real SQLite files, the
dry run, and a purge running inside the daemon while it ingests at full speed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from sidecar.config import DatabaseConfig, RetentionConfig, RetentionRule, load_config
from sidecar.storage.db import open_database
from sidecar.storage.purge import (
    Policy,
    PurgeRun,
    age_groups,
    distinct_types,
    incremental_vacuum,
    plan,
    used_bytes,
)
from tests.conftest import ROOT, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Publisher, event_messages
from tests.support.seed import create_db, event, now_ms, query, sha256

SENSOR, AUDIT, USER = "kairo.sensor.temp", "kairo.audit.login", "kairo.user.message"


def policy(**kwargs: object) -> Policy:
    rules = kwargs.pop("rules", [])
    config = RetentionConfig(rules=[RetentionRule(type=t, max_age=a) for t, a in rules],  # type: ignore[attr-defined]
                             **kwargs)  # type: ignore[arg-type]
    return Policy.from_config(config)


def open_db(path: Path):  # type: ignore[no-untyped-def]
    return open_database(DatabaseConfig(url=f"sqlite:///{path}"), create=False)


def purge(path: Path, p: Policy) -> object:
    db = open_db(path)
    try:
        return PurgeRun(db, p, now_ms()).run()
    finally:
        db.close()


def ids(path: Path, where: str = "1") -> set[str]:
    return {r[0] for r in query(path, f"SELECT id FROM events WHERE {where}")}


# ------------------------------------------------------------------------------ the policy
def test_first_matching_rule_wins_and_forever_protects() -> None:
    """A type takes the max_age of the first rule whose glob matches, else the default; only a
    rule's "forever" protects a type from the count and size caps."""
    p = policy(max_age=30 * 86400, rules=[("kairo.sensor.*", 7 * 86400), ("kairo.*", 0)])
    assert p.max_age_for(SENSOR) == 7 * 86400
    assert p.max_age_for(AUDIT) == 0 and p.protected(AUDIT)
    assert p.max_age_for("other.type") == 30 * 86400 and not p.protected("other.type")
    assert not policy(max_age=0, max_events=10).protected("x")  # no rule: the cap applies
    assert not policy().active and policy(max_events=1).active


def test_age_groups_share_a_cutoff_per_age() -> None:
    """Types with the same effective age are purged together with one cutoff."""
    p = policy(max_age=10, rules=[("a.*", 5)])
    assert age_groups(p, ["a.x", "a.y", "b"], now_ms=100_000) == [(90_000, ["b"]),
                                                                  (95_000, ["a.x", "a.y"])]


# ------------------------------------------------------------------------------ purges
def test_purge_by_age_keeps_recent_events(tmp_path: Path) -> None:
    """max_age deletes events created before now - max_age and nothing newer."""
    db = create_db(tmp_path / "k.db", [event(i, age_days=i % 20) for i in range(2000)])
    result = purge(db, policy(max_age=10 * 86400, batch_size=128))
    assert ids(db) == {f"e-{i:07d}" for i in range(2000) if i % 20 < 10}
    assert result.by_age == 1000  # type: ignore[attr-defined]


def test_per_type_rules(tmp_path: Path) -> None:
    """Sensors kept 7 days, audit forever, the rest 30 days."""
    rows = ([event(i, type=SENSOR, age_days=i % 40, prefix="s") for i in range(400)]
            + [event(i, type=AUDIT, age_days=i % 400, prefix="a") for i in range(400)]
            + [event(i, type=USER, age_days=i % 40, prefix="u") for i in range(400)])
    db = create_db(tmp_path / "k.db", rows)
    purge(db, policy(max_age=30 * 86400, rules=[("kairo.sensor.*", 7 * 86400),
                                                ("kairo.audit.*", 0)]))
    assert ids(db, f"type = '{SENSOR}'") == {f"s-{i:07d}" for i in range(400) if i % 40 < 7}
    assert len(ids(db, f"type = '{AUDIT}'")) == 400
    assert ids(db, f"type = '{USER}'") == {f"u-{i:07d}" for i in range(400) if i % 40 < 30}


def test_purge_by_count_keeps_the_newest_and_skips_forever_types(tmp_path: Path) -> None:
    """max_events deletes the oldest events (by seq) down to the cap; "forever" types stay and
    do not count against what the cap removes."""
    rows = [event(i, type=AUDIT if i % 10 == 0 else USER) for i in range(1000)]
    db = create_db(tmp_path / "k.db", rows)
    result = purge(db, policy(max_events=500, batch_size=64, rules=[("kairo.audit.*", 0)]))
    assert query(db, "SELECT count(*) FROM events")[0][0] == 500
    assert result.by_count == 500  # type: ignore[attr-defined]
    assert len(ids(db, f"type = '{AUDIT}'")) == 100  # all kept
    kept_users = sorted(ids(db, f"type = '{USER}'"))
    assert kept_users == sorted(f"e-{i:07d}" for i in range(1000) if i % 10)[-400:]


def test_purge_by_size_shrinks_the_file(tmp_path: Path) -> None:
    """max_db_bytes deletes the oldest events until the used pages fit, and incremental vacuum
    gives the freed pages back: the file itself gets smaller than the cap."""
    db = create_db(tmp_path / "k.db", [event(i) for i in range(20_000)])
    before = db.stat().st_size
    cap = 1024 * 1024
    assert before > 4 * cap
    result = purge(db, policy(max_db_bytes=cap, batch_size=1000))
    conn = open_db(db)
    try:
        assert used_bytes(conn) <= cap
    finally:
        conn.close()
    assert db.stat().st_size <= cap
    assert result.pages_freed > 0  # type: ignore[attr-defined]
    newest = query(db, "SELECT min(seq), max(seq) FROM events")[0]
    assert newest[1] == 20_000  # the newest event is kept, the oldest went
    count = query(db, "SELECT count(*) FROM events")[0][0]
    assert newest[1] - newest[0] + 1 == count  # what is left is one contiguous newest range


def test_one_vacuum_step_returns_a_whole_chunk_of_pages(tmp_path: Path) -> None:
    """incremental_vacuum(n) frees n pages at once (regression: through execute() Python's
    sqlite3 stepped the pragma once, so each purge step gave back a single page)."""
    db = create_db(tmp_path / "k.db", [event(i) for i in range(3000)])
    conn = open_db(db)
    try:
        conn.execute_sql("DELETE FROM events")
        free = conn.execute_sql("PRAGMA freelist_count").fetchone()[0]
        assert free > 150
        incremental_vacuum(conn, 100)
        assert conn.execute_sql("PRAGMA freelist_count").fetchone()[0] == free - 100
    finally:
        conn.close()


def test_dead_letters_follow_max_age(tmp_path: Path) -> None:
    """Dead letters older than max_age go too."""
    db = create_db(tmp_path / "k.db")
    old, new = now_ms() - 40 * 86_400_000, now_ms()
    conn = open_db(db)
    conn.execute_sql("INSERT INTO dead_letters (topic, payload, payload_size, reason, received_at) "
                     "VALUES ('t', x'00', 1, 'bad', ?), ('t', x'00', 1, 'bad', ?)", (old, new))
    conn.close()
    result = purge(db, policy(max_age=30 * 86400))
    assert result.dead_letters == 1  # type: ignore[attr-defined]
    assert query(db, "SELECT received_at FROM dead_letters") == [(new,)]


def test_each_step_deletes_at_most_one_batch(tmp_path: Path) -> None:
    """A purge advances one batch per step, so the writer waits for at most one batch."""
    db_path = create_db(tmp_path / "k.db", [event(i, age_days=100) for i in range(1000)])
    db = open_db(db_path)
    run = PurgeRun(db, policy(max_age=86400, batch_size=100), now_ms())
    seen = []
    while run.step():
        seen.append(run.result.by_age)
    db.close()
    deltas = [b - a for a, b in zip([0, *seen], seen, strict=False)]
    assert max(deltas) <= 100
    assert run.result.by_age == 1000


def test_dry_run_plan_matches_what_the_purge_deletes(tmp_path: Path) -> None:
    """plan() counts exactly what the purge then deletes by age and by count."""
    rows = ([event(i, type=SENSOR, age_days=i % 20, prefix="s") for i in range(600)]
            + [event(i, type=USER, age_days=i % 60, prefix="u") for i in range(600)])
    db_path = create_db(tmp_path / "k.db", rows)
    p = policy(max_age=30 * 86400, max_events=500, rules=[("kairo.sensor.*", 7 * 86400)])
    db = open_db(db_path)
    lines = plan(db, p, now_ms())
    db.close()
    by_age = sum(line.rows for line in lines if line.reason.startswith("older"))
    by_count = sum(line.rows for line in lines if "max_events" in line.reason)
    result = purge(db_path, p)
    assert (by_age, by_count) == (result.by_age, result.by_count)  # type: ignore[attr-defined]


def test_distinct_types_walks_the_index(tmp_path: Path) -> None:
    """distinct_types lists each type once, sorted."""
    db_path = create_db(tmp_path / "k.db", [event(i, type=t, prefix=t) for i in range(3)
                                            for t in (USER, SENSOR, AUDIT)])
    db = open_db(db_path)
    assert distinct_types(db) == sorted({USER, SENSOR, AUDIT})
    db.close()


def test_cli_dry_run_changes_nothing(tmp_path: Path) -> None:
    """`purge --dry-run` prints what would go and leaves the file byte for byte as it was."""
    db = create_db(tmp_path / "k.db", [event(i, age_days=i % 10) for i in range(100)])
    before = sha256(db)
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db}",
           "KAIRO_SIDECAR_RETENTION__MAX_AGE": "5d"}
    out = subprocess.run([sys.executable, "-m", "sidecar", "purge", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "older than 5d" in out.stdout and "dry run" in out.stdout
    assert " 50 " in out.stdout.split("older than")[0].splitlines()[-1] + " "
    assert sha256(db) == before


def test_cli_purge_deletes(tmp_path: Path) -> None:
    """`purge` deletes what the policy says and reports it."""
    db = create_db(tmp_path / "k.db", [event(i, age_days=i % 10) for i in range(100)])
    env = {**os.environ, "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db}",
           "KAIRO_SIDECAR_RETENTION__MAX_AGE": "5d"}
    out = subprocess.run([sys.executable, "-m", "sidecar", "purge"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "deleted 50 events" in out.stdout
    assert query(db, "SELECT count(*) FROM events")[0][0] == 50


# ------------------------------------------------------------------------------ in the daemon
@pytest.mark.slow
def test_purge_during_heavy_ingest_loses_nothing_it_should_keep(tmp_path: Path,
                                                                 broker: Broker) -> None:
    """The daemon purges 30k old events in small batches while 20k new events arrive at full
    speed: every new event is stored, old audit events (kept forever) stay, old sensors go."""
    db_path = tmp_path / "kairo.db"
    create_db(db_path, [event(i, type=SENSOR if i % 3 else AUDIT, age_days=30 + i % 5, prefix="old")
                        for i in range(30_000)])
    config = load_config(environ={
        "KAIRO_SIDECAR_MQTT__HOST": broker.host, "KAIRO_SIDECAR_MQTT__PORT": str(broker.port),
        "KAIRO_SIDECAR_MQTT__CLIENT_ID": f"kairo-test-purge-{uuid.uuid4().hex[:8]}",
        "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{db_path}",
        "KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": "0.05",
        "KAIRO_SIDECAR_RETENTION__MAX_AGE": "7d",
        "KAIRO_SIDECAR_RETENTION__RULES": '[{"type": "kairo.audit.*", "max_age": "forever"}]',
        "KAIRO_SIDECAR_RETENTION__INTERVAL": "0",  # no timer: the test asks for the purge
        "KAIRO_SIDECAR_RETENTION__BATCH_SIZE": "200",
    })
    sidecar = Sidecar(config)
    ready = threading.Event()
    thread = threading.Thread(target=sidecar.run, daemon=True,
                              kwargs={"install_signals": False, "on_ready": ready.set})
    thread.start()
    try:
        assert ready.wait(15)
        maintenance = sidecar.maintenance
        assert maintenance is not None
        messages = event_messages(20_000, prefix="new")
        with Publisher(broker.host, broker.port, max_inflight=200) as pub:
            pub.publish_in_background(messages)
            wait_until(lambda: len(ids(db_path, "id LIKE 'new-%'")) >= 2000, timeout=30,
                       message="ingest under way")
            maintenance.request_purge()
            stored_when_asked = len(ids(db_path, "id LIKE 'new-%'"))
            accepted = pub.wait_all(120)
        assert len(accepted) == 20_000
        assert stored_when_asked < 20_000  # the purge ran while events were still arriving
        wait_until(lambda: maintenance.last_purge is not None and not maintenance.purging,
                   timeout=60, message="the purge to finish")
        wait_until(lambda: len(ids(db_path, "id LIKE 'new-%'")) == 20_000, timeout=60,
                   message="every new event stored")
    finally:
        sidecar.request_stop()
        thread.join(30)
    assert ids(db_path, "id LIKE 'old-%'") == {f"old-{i:07d}" for i in range(30_000) if i % 3 == 0}
    assert maintenance.last_purge is not None and maintenance.last_purge.by_age == 20_000
    assert maintenance.last_purge.steps > 100  # many small steps, interleaved with the writes
