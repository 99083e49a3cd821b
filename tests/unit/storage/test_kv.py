"""The key-value store on a real file (storage.kv, migration 006, transfer, CLI --db): a pre-006
file keeps its rows, writes check if_version and record their event, prefix pages stop at
the prefix, export/import carry the store and importing twice changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee_migrate import Router

from sidecar.config import DatabaseConfig
from sidecar.core.kv import KvWrite
from sidecar.errors import RequestError
from sidecar.storage import kv
from sidecar.storage.db import MIGRATIONS_DIR, migrate, open_database
from sidecar.storage.maintenance import Maintenance
from tests.support.faultkit import SmallFilesystem
from tests.support.seed import create_db, query
from tests.unit.storage.test_backup_transfer import run_cli
from tests.unit.storage.test_diskguard import MiB, guard_config, run_maintenance, seeded


def test_migration_006_keeps_rows_at_version_1(tmp_path: Path) -> None:
    """A pre-006 kv_store row (key, value, updated_at) migrates to version 1, values intact,
    and the table then takes versioned writes."""
    db = open_database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'k.db'}"))
    Router(db, migrate_dir=MIGRATIONS_DIR).run("005_event_types")
    db.execute_sql("INSERT INTO kv_store (key, value, updated_at) VALUES ('agent/memory', "
                   "'{\"facts\": [1, 2]}', 1700000000000)")
    assert migrate(db) == ["006_kv_versions", "007_kv_projected_seq", "009_deferred_keys",
                           "010_keys_automerge",
                           "011_event_search",
                           "012_kv_key_byte_order", "013_search_automerge"]
    entry = kv.get(db, "agent/memory")
    assert entry == kv.KvEntry("agent/memory", '{"facts": [1, 2]}', 1, 1700000000000)
    assert kv.apply_now(db, KvWrite(op="put", key="agent/memory", value="3", if_version=1),
                        topic_base="kb").version == 2  # type: ignore[union-attr]
    db.close()


def test_writes_check_versions_and_record_events(tmp_path: Path) -> None:
    """Puts count versions from 1, a stale if_version and a delete of an absent key raise and
    write nothing, and each write stored one kairo.kv.* event on <base>/kv/state/<key>."""
    path = create_db(tmp_path / "k.db")
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    put = KvWrite(op="put", key="a/b", value='{"x":1}')
    assert kv.apply_now(db, put, topic_base="kb").version == 1  # type: ignore[union-attr]
    assert kv.apply_now(db, put, topic_base="kb").version == 2  # type: ignore[union-attr]
    for bad, code in ((KvWrite(op="put", key="a/b", value="1", if_version=1), "conflict"),
                      (KvWrite(op="put", key="a/b", value="1", if_version=0), "conflict"),
                      (KvWrite(op="delete", key="nope"), "not_found")):
        with pytest.raises(RequestError) as err:
            kv.apply_now(db, bad, topic_base="kb")
        assert err.value.code == code
    noop = KvWrite(op="put", key="a/b", value='{"x":1}', same_is_noop=True)
    assert kv.apply_now(db, noop, topic_base="kb") is None
    gone = kv.apply_now(db, KvWrite(op="delete", key="a/b", if_version=2), topic_base="kb")
    assert gone == kv.KvEntry("a/b", None, 2, gone.updated_at)  # type: ignore[union-attr]
    db.close()
    assert query(path, "SELECT topic, type, source FROM events ORDER BY seq") == [
        ("kb/kv/state/a/b", "kairo.kv.put", "kairo-sidecar")] * 2 + [
        ("kb/kv/state/a/b", "kairo.kv.delete", "kairo-sidecar")]
    assert query(path, "SELECT count(*) FROM kv_store") == [(0,)]


def test_prefix_pages_stop_at_the_prefix(tmp_path: Path) -> None:
    """A prefix page holds only keys starting with it (not the next character's keys), in
    key order, non-ASCII keys included, with next set only when more follow."""
    path = create_db(tmp_path / "k.db")
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    keys = ["a", "a/", "a/x", "a/\u00e9", "a/\U0001f600", "a0", "b/1", "a.b"]
    with db.atomic():
        for k in keys:
            kv.apply(db, KvWrite(op="put", key=k, value="1"), topic_base="kb")
    assert [e.key for e in kv.page(db, prefix="a/").entries] == ["a/", "a/x", "a/\u00e9",
                                                                 "a/\U0001f600"]
    first = kv.page(db, prefix="a", limit=3)
    assert [e.key for e in first.entries] == ["a", "a.b", "a/"] and first.next == "a/"
    rest = kv.page(db, prefix="a", after=first.next, limit=10)
    assert [e.key for e in rest.entries] == ["a/x", "a/\u00e9", "a/\U0001f600", "a0"]
    assert rest.next is None
    db.close()


def test_export_import_carry_the_store_and_import_twice_changes_nothing(tmp_path: Path) -> None:
    """kv put --db, export, import into a new file: same entries and versions; importing again
    (or an older version) writes nothing; a filtered export holds no kv lines."""
    src = create_db(tmp_path / "src.db")
    for args in (("plugin/a", '{"enabled": true}'), ("plugin/b", "plain text"),
                 ("plugin/a", '{"enabled": false}')):
        result = run_cli("kv", "put", *args, "--db", str(src), db=src)
        assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"key": "plugin/a", "version": 2}
    exported = run_cli("export", db=src).stdout
    kv_lines = [json.loads(line) for line in exported.splitlines() if line.startswith(b'{"kv"')]
    assert [line["kv"]["key"] for line in kv_lines] == ["plugin/a", "plugin/b"]
    assert b'"kv"' not in run_cli("export", "--type", "kairo.kv.put", db=src).stdout
    dest = tmp_path / "dest.db"
    first = run_cli("import", "-", db=dest, stdin=exported)
    assert first.returncode == 0, first.stderr
    assert b"key-value store: 2 of 2 entries written" in first.stdout
    again = run_cli("import", "-", db=dest, stdin=exported)
    assert b"key-value store: 0 of 2 entries written" in again.stdout
    rows = "SELECT key, value, version, updated_at FROM kv_store ORDER BY key"
    assert query(dest, rows) == query(src, rows)
    assert query(dest, "SELECT count(*) FROM events") == [(3,)]
    got = run_cli("kv", "get", "plugin/b", "--db", str(dest), db=dest)
    assert json.loads(got.stdout)["value"] == "plain text"
    listed = run_cli("kv", "list", "plugin/", "--db", str(dest), db=dest)
    assert [json.loads(line)["key"] for line in listed.stdout.splitlines()] == ["plugin/a",
                                                                                 "plugin/b"]
    bad = run_cli("kv", "put", "a/+", "1", "--db", str(dest), db=dest)
    assert bad.returncode == 2 and b"key: must not contain '+'" in bad.stderr


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem]:
    reason = SmallFilesystem.unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    with SmallFilesystem(tmp_path / "small-fs", size=8 * MiB) as fs:
        yield fs


def test_disk_guard_deletes_events_never_kv_entries(small_fs: SmallFilesystem) -> None:
    """On a nearly full disk the guard deletes events down to its floor and leaves every
    kv_store entry."""
    db_path = seeded(small_fs)
    config = guard_config(db_path, RETENTION__MIN_FREE="25%")
    db = open_database(config.database, create=False)
    try:
        with db.atomic():
            for i in range(50):
                kv.apply(db, KvWrite(op="put", key=f"keep/{i}", value=f'{{"i":{i}}}'),
                         topic_base="kb")
        small_fs.fill(leave=512 * 1024)
        m = Maintenance(db, config)
        run_maintenance(m)
        assert m.guard is not None and m.guard.state.deleted > 0
    finally:
        db.close()
    assert query(db_path, "SELECT count(*), sum(version) FROM kv_store") == [(50, 50)]


def test_kv_store_works_on_both_engines(any_store) -> None:
    """Put, conditional put, list, delete and the recorded events through storage.kv, on SQLite
    and on PostgreSQL (the migrations, the upsert and the kv events are portable)."""
    from sidecar.core.kv import KvWrite
    from sidecar.storage import kv as kv_store
    from sidecar.storage.startup import open_store

    db = open_store(any_store.config, schema="migrate", shared=True)
    try:
        first = kv_store.apply_now(db, KvWrite(op="put", key="plugin/a", value='{"on": true}'),
                                   topic_base="kairo-sidecar")
        assert first is not None and first.version == 1
        second = kv_store.apply_now(db, KvWrite(op="put", key="plugin/a", value='{"on": false}',
                                                if_version=1), topic_base="kairo-sidecar")
        assert second is not None and second.version == 2
        with pytest.raises(RequestError):
            kv_store.apply_now(db, KvWrite(op="put", key="plugin/a", value="1", if_version=1),
                               topic_base="kairo-sidecar")
        kv_store.apply_now(db, KvWrite(op="put", key="plugin/b", value="2"),
                           topic_base="kairo-sidecar")
        got = kv_store.get(db, "plugin/a")
        assert got is not None and (got.version, got.value.replace(" ", "")) == (2, '{"on":false}')
        listed = kv_store.page(db, prefix="plugin/", limit=10)
        assert [e.key for e in listed.entries] == ["plugin/a", "plugin/b"]
        kv_store.apply_now(db, KvWrite(op="delete", key="plugin/b"), topic_base="kairo-sidecar")
        assert kv_store.get(db, "plugin/b") is None
    finally:
        db.close()
    rows = any_store.execute("SELECT type FROM events ORDER BY seq")
    assert [r[0] for r in rows] == ["kairo.kv.put"] * 3 + ["kairo.kv.delete"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_list_pages_keys_in_byte_order_whatever_the_collation(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """kv/list pages keys in byte (code point) order on both engines, also on a PostgreSQL
    database whose default collation is a language's (ICU en-US: ``a/b`` before ``a/B``)."""
    from sidecar.storage.startup import open_store

    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'k.db'}"
    else:
        server = request.getfixturevalue("pg_server")
        url = server.fresh_database(icu_locale="en-US")
        request.addfinalizer(lambda: server.drop_database(url))
    keys = ["a/b", "a/B", "a/_", "a/-", "a/\u00e9", "a/e", "a/f", "a/\U0001f600", "a/Z", "a/1"]
    db = open_store(DatabaseConfig(url=url), schema="migrate", shared=True)
    try:
        for k in keys:
            kv.apply_now(db, KvWrite(op="put", key=k, value="1"), topic_base="kb")
        listed: list[str] = []
        after = None
        while True:  # pages of 3: each page starts after the last key of the one before
            page = kv.page(db, prefix="a/", after=after, limit=3)
            listed += [e.key for e in page.entries]
            if page.next is None:
                break
            after = page.next
    finally:
        db.close()
    assert listed == sorted(keys, key=lambda k: k.encode())
    assert listed[:4] == ["a/-", "a/1", "a/B", "a/Z"]
