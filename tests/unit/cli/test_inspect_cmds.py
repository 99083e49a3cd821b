"""The stats and dead-letters commands and --format table, run in-process (``cli.main``) on real
SQLite files written by the real writer, and stats / re-ingest beside a real daemon and broker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import commands as cli
from sidecar.config import DatabaseConfig
from sidecar.storage.db import migrate, open_database
from tests.conftest import count_rows, wait_until
from tests.support import seed
from tests.support.broker import Broker
from tests.support.inprocess import start_inprocess
from tests.system.test_subscriber import publish, publisher
from tests.unit.ingest.test_letters import envelope, store


@pytest.fixture(autouse=True)
def _keep_test_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() points structlog at this test's captured stderr, and structlog caches loggers on
    first use: a later test would log to a closed file. Keep the suite's logging set-up."""
    monkeypatch.setattr(cli, "configure_logging", lambda config: None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def letters_db(path: Path, messages: list[tuple[str, bytes]], **kwargs: Any) -> Path:
    db = open_database(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate(db)
    store(db, messages, **kwargs)
    db.close()
    return path


def config_file(path: Path, db: Path, max_payload_bytes: int = 100_000) -> Path:
    path.write_text(f'[database]\nurl = "sqlite:///{db}"\n'
                    f"[ingest]\nmax_payload_bytes = {max_payload_bytes}\n")
    return path


# ------------------------------------------------------------------------------ dead-letters
def test_list_show_reingest_from_the_command_line(tmp_path, capsys):
    """list (JSON lines, next cursor on stderr), show (the payload), reingest of one id with a
    config allowing the size; a second reingest stores nothing and exits 1."""
    db = letters_db(tmp_path / "k.db", [("kairo/a/x", envelope("a-1", "x" * 500)),
                                        ("kairo/b/x", b"{broken"),
                                        ("kairo/c/x", envelope(None, "y" * 500))])
    code, out, err = run(capsys, "dead-letters", "list", "--db", str(db), "--limit", "2")
    assert code == 0 and [x["id"] for x in lines(out)] == [3, 2] and "next: 2" in err
    code, out, _ = run(capsys, "dead-letters", "list", "--db", str(db), "--after", "2")
    (first,) = lines(out)
    assert first["topic"] == "kairo/a/x" and "too large" in first["reason"]
    assert first["truncated"] is False and first["size"] > 500

    code, out, _ = run(capsys, "dead-letters", "show", "2", "--db", str(db))
    assert code == 0 and json.loads(out)["payload"] == "{broken"

    conf = config_file(tmp_path / "fixed.toml", db)
    code, out, err = run(capsys, "dead-letters", "reingest", "1", "--config", str(conf))
    assert code == 0 and lines(out)[0]["result"] == "stored" and "1 stored" in err
    code, out, err = run(capsys, "dead-letters", "reingest", "1", "--config", str(conf))
    assert code == 1 and lines(out)[0]["result"] == "not_found"
    assert count_rows(db) == 1


def test_reingest_all_with_filters_and_twice(tmp_path, capsys):
    """--all --reason re-ingests the matching ones (the id-less one too), reports the one that
    still fails, and a second run adds no row."""
    db = letters_db(tmp_path / "k.db", [("kairo/a/x", envelope("a-1", "x" * 500)),
                                        ("kairo/b/x", b"{broken"),
                                        ("kairo/c/x", envelope(None, "y" * 500))])
    conf = config_file(tmp_path / "fixed.toml", db)
    code, out, err = run(capsys, "dead-letters", "reingest", "--all", "--reason", "TOO LARGE",
                         "--config", str(conf))
    assert code == 0 and [x["result"] for x in lines(out)] == ["stored", "stored"]
    code, out, err = run(capsys, "dead-letters", "reingest", "--all", "--config", str(conf))
    assert code == 1 and [x["result"] for x in lines(out)] == ["failed"]
    assert "malformed JSON" in lines(out)[0]["reason"] and "1 left" in err
    assert count_rows(db) == 2 and count_rows(db, "dead_letters") == 1


@pytest.mark.parametrize("argv, key", [
    (("reingest",), "ID"),
    (("reingest", "1", "--all"), "ID"),
    (("reingest", "1", "--reason", "x"), "ID"),
    (("list", "--topic", "a/#/b"), "--topic"),
    (("list", "--since", "soon"), "--since"),
])
def test_bad_dead_letter_arguments_exit_2_naming_the_option(tmp_path, capsys, argv, key):
    """A missing/ambiguous id or a bad filter exits 2 with a message naming the option."""
    db = letters_db(tmp_path / "k.db", [])
    code, _, err = run(capsys, "dead-letters", *argv, "--db", str(db))
    assert code == 2 and f"kairo-sidecar dead-letters: {key}: " in err and "Traceback" not in err


def test_since_takes_an_age_or_rfc3339(tmp_path, capsys):
    """--since 1h and an RFC 3339 time select by receive time."""
    db = letters_db(tmp_path / "k.db", [("kairo/a/x", b"{")])
    for since, expected in (("1h", 1), ("2999-01-01T00:00:00Z", 0)):
        code, out, _ = run(capsys, "dead-letters", "list", "--since", since, "--db", str(db))
        assert code == 0 and len(lines(out)) == expected


def test_list_as_a_table_fits_the_terminal(tmp_path, capsys, monkeypatch):
    """--format table: a header and one line per dead letter, none wider than COLUMNS."""
    monkeypatch.setenv("COLUMNS", "70")
    db = letters_db(tmp_path / "k.db", [("kairo/a/" + "long" * 20, b"{\n" + b"x" * 300)])
    code, out, _ = run(capsys, "dead-letters", "list", "--format", "table", "--db", str(db))
    header, row = out.splitlines()
    assert code == 0 and header.split()[:3] == ["id", "received", "size"]
    assert row.split()[0] == "1" and max(len(header), len(row)) <= 70 and row.endswith("…")


# ------------------------------------------------------------------------------ query table
def test_query_as_a_table_and_since_as_an_age(tmp_path, capsys, monkeypatch):
    """query --format table prints seq/time/type/source/correlation/id, cut to the width;
    --since 1d leaves out older events."""
    monkeypatch.setenv("COLUMNS", "100")
    db = seed.create_db(tmp_path / "q.db", [
        seed.event(1, age_days=3), seed.event(2, correlation_id="wf-1"), seed.event(3)])
    code, out, _ = run(capsys, "query", "--db", str(db), "--since", "1d", "--format", "table")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["seq", "time", "type", "source", "correlation", "id"]
    assert [r.split()[0] for r in rows] == ["2", "3"]
    assert rows[0].split()[-2:] == ["wf-1", "e-0000002"] and rows[1].split()[-2:] == ["-", "e-0000003"]
    assert all(len(line) <= 100 for line in out.splitlines())


# ------------------------------------------------------------------------------ stats
def test_stats_from_a_database_file(tmp_path, capsys):
    """stats --db: counts, oldest/newest, sizes from the file; table shows them readably."""
    db = seed.create_db(tmp_path / "s.db", [seed.event(i, age_days=i) for i in range(3)])
    letters_db(db, [("kairo/a/x", b"{")])
    code, out, _ = run(capsys, "stats", "--db", str(db))
    data = json.loads(out)
    assert code == 0 and data["events_total"] == 3 and data["dead_letters_total"] == 1
    assert data["oldest_event_at"] < data["newest_event_at"] and data["database_bytes"] > 0
    code, out, _ = run(capsys, "stats", "--db", str(db), "--format", "table")
    table = dict(line.split(None, 1) for line in out.splitlines())
    assert table["events_total"] == "3" and "KiB" in table["database_bytes"]
    assert table["newest_event_at"].startswith(time.strftime("%Y-", time.gmtime()))


def test_stats_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    """stats --db on a file that is not there exits 3 with a message, no traceback."""
    code, _, err = run(capsys, "stats", "--db", str(tmp_path / "none.db"))
    assert code == 3 and "does not exist" in err


def test_stats_through_the_broker(tmp_path, capsys, broker: Broker):
    """stats asks a running sidecar: its counters since start and the table's counts."""
    run_ = start_inprocess(tmp_path, broker, INGEST__MAX_PAYLOAD_BYTES="300")
    client = publisher(broker)
    try:
        publish(client, "kairo/s/x", envelope("s-1", "ok"))
        publish(client, "kairo/s/x", envelope("s-2", "x" * 400))
        wait_until(lambda: count_rows(run_.db_path, "dead_letters") == 1)
        address = ("--host", broker.host, "--port", str(broker.port))
        code, out, _ = run(capsys, "stats", *address)
        data = json.loads(out)
        assert code == 0 and data["events_total"] == 1 and data["events_stored"] == 1
        assert data["dead_letters"] == 1 and data["dead_letters_total"] == 1
        code, out, _ = run(capsys, "stats", *address, "--format", "table")
        assert code == 0 and any(line.split()[:2] == ["events_total", "1"]
                                 for line in out.splitlines())
        # the disk guard's object is flattened into its own lines, never a Python repr
        assert any(line.split()[:2] == ["disk_guard.min_free", "10%"] for line in out.splitlines())
        assert "{" not in out
    finally:
        client.loop_stop()
        client.disconnect()
        run_.sidecar.request_stop()
        run_.thread.join(15)


def test_reingest_beside_a_running_daemon(tmp_path, capsys, broker: Broker, sidecar_factory):
    """Dead letters from oversized publishes are re-ingested while the daemon ingests a stream:
    every event once, the re-ingested ones included, no dead letter left."""
    proc = sidecar_factory(broker, INGEST__MAX_PAYLOAD_BYTES="300",
                           DATABASE__BUSY_TIMEOUT_MS="20").start()
    client = publisher(broker)
    try:
        for i in range(20):
            publish(client, "kairo/big/x", envelope(f"big-{i}" if i % 2 else None, "x" * 400))
        wait_until(lambda: count_rows(proc.db_path, "dead_letters") == 20)
        for i in range(300):  # the daemon keeps writing while re-ingest runs
            client.publish("kairo/live/x", envelope(f"live-{i}", "ok"), qos=1)
        conf = config_file(tmp_path / "fixed.toml", proc.db_path)
        code, out, _ = run(capsys, "dead-letters", "reingest", "--all", "--config", str(conf))
        assert code == 0 and [x["result"] for x in lines(out)] == ["stored"] * 20
        wait_until(lambda: count_rows(proc.db_path) == 320, timeout=30)
        assert seed.query(proc.db_path, "SELECT count(DISTINCT id) FROM events") == [(320,)]
        assert count_rows(proc.db_path, "dead_letters") == 0
    finally:
        client.loop_stop()
        client.disconnect()
        proc.close()


# ------------------------------------------------------------------------------ kv tables
def test_kv_list_and_get_as_tables(tmp_path, capsys, monkeypatch):
    """kv list --format table: key/version/updated/value, one line per entry (a newline in a
    value stays \\n, a long value is cut to COLUMNS); kv get --format table: one field per
    line; JSON lines stay the default, byte for byte."""
    monkeypatch.setenv("COLUMNS", "90")
    db = str(seed.create_db(tmp_path / "kv.db"))
    values = {"a/long": json.dumps({"text": "x" * 300}), "a/notes": '"one\\ntwo"',
              "a/obj": '{"c": "Zü", "on": true}'}
    for key, value in values.items():
        assert run(capsys, "kv", "put", key, value, "--db", db)[0] == 0
    code, json_out, _ = run(capsys, "kv", "list", "a/", "--db", db)
    assert code == 0 and [e["key"] for e in lines(json_out)] == list(values)
    code, out, _ = run(capsys, "kv", "list", "a/", "--db", db, "--format", "TABLE")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["key", "version", "updated", "value"]
    assert [r.split()[:2] for r in rows] == [["a/long", "1"], ["a/notes", "1"], ["a/obj", "1"]]
    assert rows[0].endswith("…") and all(len(line) <= 90 for line in out.splitlines())
    assert rows[1].split()[2].startswith(time.strftime("%Y-", time.gmtime()))
    assert rows[1].split()[-1] == '"one\\ntwo"' and rows[2].endswith('{"c":"Zü","on":true}')

    code, out, _ = run(capsys, "kv", "get", "a/notes", "--db", db, "--format", "table")
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and fields["key"] == "a/notes" and fields["version"] == "1"
    assert fields["value"] == '"one\\ntwo"' and fields["updated_at"].endswith(")")
    code, out, _ = run(capsys, "kv", "get", "a/long", "--db", db, "--format", "table")
    (long_line,) = [line for line in out.splitlines() if line.startswith("value")]
    assert code == 0 and len(out.splitlines()) == 4 and len(long_line) == 90
    assert long_line.endswith("…")
    code, out, _ = run(capsys, "kv", "get", "a/obj", "--db", db)
    assert out == '{"key":"a/obj","value":{"c":"Zü","on":true},"version":1,' \
                  f'"updated_at":{lines(json_out)[2]["updated_at"]}}}\n'


# ------------------------------------------------------------------------------ event tables
def test_latest_get_and_replay_as_tables(tmp_path, capsys, monkeypatch):
    """latest --format table puts the key's value first; get --format table prints one field
    per line (payload flattened, long values cut); replay --format table prints one header
    and every page's rows in seq order."""
    monkeypatch.setenv("COLUMNS", "100")
    db = str(seed.create_db(tmp_path / "e.db", [
        seed.event(i, type=f"kairo.t.{i % 2}", correlation_id="wf-1" if i == 2 else None)
        for i in range(1, 6)]))
    code, out, _ = run(capsys, "latest", "payload.i", "--type", "kairo.t.*", "--db", db,
                       "--format", "table")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["payload.i", "seq", "time", "type", "source", "id"]
    assert [r.split()[:2] for r in rows] == [[str(i), str(i)] for i in range(1, 6)]
    assert rows[0].split()[-1] == "e-0000001" and all(len(line) <= 100 for line in out.splitlines())

    code, out, _ = run(capsys, "get", "e-0000002", "--db", db, "--format", "table")
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and fields["id"] == "e-0000002" and fields["payload.i"] == "2"
    assert fields["metadata.correlationId"] == "wf-1" and fields["seq"] == "2"
    assert fields["payload.pad"].endswith("…") and all(len(line) <= 100 for line in out.splitlines())
    assert fields["created_at"].startswith(time.strftime("%Y-", time.gmtime()))

    code, out, _ = run(capsys, "replay", "--db", db, "--batch", "2", "--format", "table")
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[:3] == ["seq", "time", "type"]
    assert [r.split()[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[1].split()[-2:] == ["wf-1", "e-0000002"]
    code, out, _ = run(capsys, "replay", "--db", db, "--batch", "2")
    assert [e["seq"] for e in lines(out)] == [1, 2, 3, 4, 5]
