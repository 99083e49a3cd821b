"""``kairo-sidecar search`` and ``search-index`` in-process on a real SQLite file: status, a
rebuild that resumes after an interruption, the check, searches with --db, their errors and
exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from sidecar.cli.commands import main
from sidecar.storage import search
from tests.support.seed import create_db, event
from tests.support.stores import Store


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KAIRO_SIDECAR_* from the outside but search on (as the daemon's config would say)."""
    for name in list(os.environ):
        if name.startswith("KAIRO_SIDECAR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAIRO_SIDECAR_SEARCH__ENABLED", "true")
    monkeypatch.setenv("KAIRO_SIDECAR_SEARCH__BACKFILL_BATCH", "100")
    monkeypatch.chdir(tmp_path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_rebuild_resumes_and_search_reads_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """status says off, then how many wait; a rebuild interrupted after 300 events (its step
    rolled back) resumes and indexes the rest; check passes; search --db finds every event."""
    d = str(create_db(tmp_path / "kairo.db", [event(i) for i in range(1000)]))
    code, out, _ = cli(capsys, "search-index", "status", "--db", d)
    assert code == 0 and "search: off" in out
    calls = 0
    real = search.backfill

    def interrupted(db, *, limit):  # the fourth step dies before its commit
        nonlocal calls
        calls += 1
        if calls == 4:
            with db.atomic("IMMEDIATE"):
                db.execute_sql("UPDATE event_search_state SET backfilled_to = 999")
                raise KeyboardInterrupt
        return real(db, limit=limit)

    with monkeypatch.context() as patch:
        patch.setattr(search, "backfill", interrupted)
        assert main(["search-index", "rebuild", "--db", d]) == 130  # Ctrl-C
    capsys.readouterr()
    code, out, _ = cli(capsys, "search-index", "status", "--db", d)
    assert code == 0 and "700 existing events not indexed yet" in out
    code, out, _ = cli(capsys, "search-index", "rebuild", "--db", d)
    assert code == 0 and out.startswith("indexed 700 existing events") and "every event" in out
    code, out, _ = cli(capsys, "search-index", "check", "--db", d)
    assert code == 0 and out.startswith("search index ok")
    code, out, err = cli(capsys, "search", "row", "--order", "asc", "--limit", "400", "--all",
                         "--db", d)
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["event"]["id"] for h in hits] == [f"e-{i:07d}" for i in range(1000)]
    assert "[row]" in hits[0]["snippet"]


def test_search_errors_exit_with_our_words(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed query exits 2 naming the problem; a file whose index is off says how to turn
    it on; a search over a file not migrated to 011 is a database error, not a traceback."""
    d = str(create_db(tmp_path / "kairo.db", [event(i) for i in range(5)]))
    code, _, err = cli(capsys, "search", '"open', "--db", d)
    assert code == 2 and "query: a quote" in err
    code, _, err = cli(capsys, "search", "row", "--db", d)
    assert code == 1 and "search_disabled" in err and "[search] enabled = true" in err
    con = sqlite3.connect(d)
    con.execute("DROP TABLE event_search_state")
    con.commit()
    con.close()
    code, _, err = cli(capsys, "search", "row", "--db", d)
    assert code != 0 and "Traceback" not in err


def test_search_index_and_search_on_postgresql(any_store: Store, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL ([database] url): status says off, rebuild builds the GIN index (nothing
    to backfill) and says every event is indexed, check passes, search --db pages every
    match."""
    if any_store.engine != "postgres":
        pytest.skip("the SQLite side is the test above")
    any_store.insert_events([
        {"id": f"p-{i:03d}", "topic": "kairo/note", "type": "kairo.note", "source": "pi",
         "payload": json.dumps({"text": f"row {i}"}), "metadata": "{}", "created_at": i + 1,
         "received_at": i + 1} for i in range(30)])
    url = any_store.url
    monkeypatch.setenv("KAIRO_SIDECAR_DATABASE__URL", url)
    code, out, err = cli(capsys, "search-index", "status")
    assert code == 0 and "search: off" in out, err
    code, out, err = cli(capsys, "search-index", "rebuild")
    assert code == 0 and "every event indexed" in out, err
    code, out, _ = cli(capsys, "search-index", "check")
    assert code == 0 and out.startswith("search index ok")
    code, out, err = cli(capsys, "search", "row", "--order", "asc", "--limit", "7", "--all",
                         "--db", url)
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["event"]["id"] for h in hits] == [f"p-{i:03d}" for i in range(30)]
    assert "[row]" in hits[0]["snippet"]


def test_search_as_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """search --format table: seq, time, type, rank, the snippet with its marks, the id; one
    line per hit, none wider than COLUMNS."""
    monkeypatch.setenv("COLUMNS", "130")
    d = str(create_db(tmp_path / "kairo.db", [event(i) for i in range(1, 4)]))
    assert cli(capsys, "search-index", "rebuild", "--db", d)[0] == 0
    code, out, err = cli(capsys, "search", "row", "--order", "asc", "--db", d, "--format", "table")
    header, *rows = out.splitlines()
    assert code == 0, err
    assert header.split() == ["seq", "time", "type", "rank", "snippet", "id"]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert all("[row]" in r and r.endswith(f"e-000000{i}") for i, r in enumerate(rows, 1))
    assert all(len(line) <= 130 for line in out.splitlines())
