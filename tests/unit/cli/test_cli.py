"""The command line as one whole: --db/--config on every database command, one time syntax,
the exit code table of the README (one test per row), our own messages, a closed pipe."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import args as cliargs
from sidecar.cli.commands import main
from sidecar.config import load_config
from sidecar.errors import ConfigError, UsageError
from sidecar.storage import sqlite_errors as busy
from tests.conftest import ROOT, count_rows, wait_until
from tests.support.broker import Broker, free_port
from tests.support.seed import DAY_MS, create_db, damage_page_holding, event

NOW_MS = 1_800_000_000_000


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KAIRO_SIDECAR_* from the outside; the default database would be under tmp_path."""
    for name in list(os.environ):
        if name.startswith("KAIRO_SIDECAR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def rows(n: int = 10) -> list[tuple[object, ...]]:
    return [event(i, age_days=i, correlation_id="wf-1" if i % 2 else None) for i in range(n)]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ids(out: str) -> list[str]:
    return [json.loads(line)["id"] for line in out.splitlines()]


# ------------------------------------------------------------------------------ --db
def test_every_database_command_takes_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """migrate, check, purge, backup, export, import, query, get and replay all read the file
    given with --db (no config file, and the default database is never created)."""
    db = create_db(tmp_path / "store.db", rows())
    other = tmp_path / "other.db"
    d = str(db)
    assert cli(capsys, "migrate", "--db", d)[0] == 0
    code, out, _ = cli(capsys, "check", "--db", d)
    assert code == 0 and "events        10" in out
    assert cli(capsys, "check", d)[0] == 0  # the positional PATH still works
    assert cli(capsys, "purge", "--dry-run", "--db", d)[0] == 0
    assert cli(capsys, "backup", str(tmp_path / "copy.db"), "--db", d)[0] == 0
    assert count_rows(tmp_path / "copy.db") == 10
    code, exported, _ = cli(capsys, "export", "--db", d)
    assert code == 0 and len(exported.splitlines()) == 10
    (tmp_path / "all.jsonl").write_text(exported)
    assert cli(capsys, "import", str(tmp_path / "all.jsonl"), "--db", str(other))[0] == 0
    assert count_rows(other) == 10
    code, out, _ = cli(capsys, "query", "--db", d, "--all")
    assert code == 0 and len(out.splitlines()) == 10
    assert ids(cli(capsys, "get", "e-0000003", "--db", d)[1]) == ["e-0000003"]
    assert len(cli(capsys, "replay", "--db", d)[1].splitlines()) == 10
    assert not (tmp_path / "data").exists()


def test_db_wins_over_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--db overrides [database] url of --config."""
    db = create_db(tmp_path / "real.db", rows(3))
    config = tmp_path / "sidecar.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "elsewhere.db"}"\n')
    code, out, _ = cli(capsys, "export", "--config", str(config), "--db", str(db))
    assert code == 0 and len(out.splitlines()) == 3
    assert not (tmp_path / "elsewhere.db").exists()


# ------------------------------------------------------------------------------ times
def test_parse_time_reads_ages_rfc3339_and_epoch_ms() -> None:
    """30d, 12h, 90m are that long ago; RFC 3339 and epoch ms are read as such."""
    assert cliargs.parse_time("30d", "--since", now_ms=NOW_MS) == NOW_MS - 30 * DAY_MS
    assert cliargs.parse_time("12h", "--since", now_ms=NOW_MS) == NOW_MS - 12 * 3_600_000
    assert cliargs.parse_time("90m", "--since", now_ms=NOW_MS) == NOW_MS - 90 * 60_000
    assert cliargs.parse_time("2026-01-01T00:00:00Z", "--until") == 1_767_225_600_000
    assert cliargs.parse_time("1700000000000", "--until") == 1_700_000_000_000
    assert cliargs.parse_time(None, "--since") is None
    with pytest.raises(UsageError) as info:
        cliargs.parse_time("forever", "--since")
    assert info.value.option == "--since"


def test_query_replay_and_export_take_an_age(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--since 4d12h selects the same events in query, replay and export."""
    db = str(create_db(tmp_path / "store.db", rows()))
    wanted = [f"e-{i:07d}" for i in range(5)]
    assert ids(cli(capsys, "query", "--db", db, "--since", "4d12h")[1]) == wanted
    assert ids(cli(capsys, "replay", "--db", db, "--since", "4d12h")[1]) == wanted
    assert ids(cli(capsys, "export", "--db", db, "--since", "4d12h")[1]) == wanted


def test_a_bad_time_names_the_option_once(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --since is exit 2 with `kairo-sidecar export: --since: ...` (the name once)."""
    db = str(create_db(tmp_path / "store.db"))
    for command in ("export", "query"):
        code, _, err = cli(capsys, command, "--db", db, "--since", "last tuesday")
        assert code == 2
        first = err.splitlines()[0]
        assert first.startswith(f"kairo-sidecar {command}: --since: 'last tuesday' is not a time")
        assert first.count("since") == 1


# ------------------------------------------------------------------------------ exit codes
def test_exit_0_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 0: a command that did its work exits 0."""
    assert cli(capsys, "check", "--db", str(create_db(tmp_path / "s.db", rows(2))))[0] == 0


def test_exit_1_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 1: get of an id that is not stored exits 1."""
    code, _, err = cli(capsys, "get", "nope", "--db", str(create_db(tmp_path / "s.db")))
    assert code == 1 and "no event with id 'nope'" in err


@pytest.mark.parametrize("argv", [
    ["query", "--corelation-id", "x"],
    ["qurey"],
    ["query", "--limit", "many"],
    ["query", "--db", "{db}", "--topic", "a/#/b"],
    ["query", "--db", "{db}", "--since", "soon"],
    ["replay", "--db", "{db}", "--live"],
    ["export", "--db", "{db}", "--topic", "a/#/b"],
    ["backup", "{db}.existing", "--db", "{db}"],
    ["check", "{db}", "--db", "{db}.other"],
    ["check", "--config", "{db}.missing.toml"],
], ids=["unknown-option", "unknown-command", "bad-int", "bad-query-filter", "bad-time",
        "db-with-live", "bad-export-filter", "backup-onto-existing", "two-databases",
        "missing-config"])
def test_exit_2_usage_and_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        argv: list[str]) -> None:
    """Row 2: a wrong command line, bad filter or bad configuration exits 2, without a
    traceback, and leaves the files alone."""
    db = create_db(tmp_path / "s.db", rows(2))
    Path(f"{db}.existing").write_bytes(b"keep me")
    code, _, err = cli(capsys, *[a.replace("{db}", str(db)) for a in argv])
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("kairo-sidecar")
    assert Path(f"{db}.existing").read_bytes() == b"keep me"


def test_exit_3_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 3: a file that is not an SQLite database exits 3 and is left untouched."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database at all" * 100)
    assert cli(capsys, "export", "--db", str(path))[0] == 3
    assert path.read_bytes() == b"not a database at all" * 100


def test_exit_4_schema_too_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 4: a database migrated by a newer version exits 4 at migrate."""
    db = create_db(tmp_path / "s.db")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO migratehistory (name, migrated_at) VALUES "
                     "('999_from_the_future', CURRENT_TIMESTAMP)")
    code, _, err = cli(capsys, "migrate", "--db", str(db))
    assert code == 4 and "999_from_the_future" in err


def test_exit_5_broker_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    """Row 5: no broker on the port exits 5 and says the connection was refused."""
    code, _, err = cli(capsys, "query", "--host", "127.0.0.1", "--port", str(free_port()))
    assert code == 5 and "connection refused" in err


def test_exit_6_damaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 6: check of a damaged database exits 6."""
    db = create_db(tmp_path / "s.db", [event(i) for i in range(2000)])
    damage_page_holding(db, b"row-e-0001000-end")
    assert cli(capsys, "check", "--db", str(db))[0] == 6


def test_exit_7_locked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 7: a write lock held by another connection past the retry deadline exits 7 (the
    deadline is shortened from 2 minutes to 1 s for the test)."""
    db = create_db(tmp_path / "s.db", rows(3))
    monkeypatch.setitem(busy.retry_busy.__kwdefaults__, "deadline", 1.0)
    monkeypatch.setenv("KAIRO_SIDECAR_DATABASE__BUSY_TIMEOUT_MS", "20")
    (tmp_path / "in.jsonl").write_text(cli(capsys, "export", "--db", str(db))[1])
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        code, _, err = cli(capsys, "import", str(tmp_path / "in.jsonl"), "--db",
                           str(tmp_path / "s.db"))
    finally:
        holder.close()
    assert code == 7 and "locked" in err


def test_exit_9_wrong_or_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 9: an encrypted database opened without its key, or with another, exits 9 with our
    message (never "not a database") and is left byte for byte."""
    from sidecar.storage import cipher

    if not cipher.available():
        pytest.skip("SQLCipher is not installed (kairo-sidecar[encryption])")
    plain = create_db(tmp_path / "s.db", rows(2))
    assert cli(capsys, "keygen", str(tmp_path / "k"))[0] == 0
    assert cli(capsys, "keygen", str(tmp_path / "other"))[0] == 0
    enc = tmp_path / "enc.db"
    assert cli(capsys, "encrypt", str(plain), str(enc), "--key-file", str(tmp_path / "k"))[0] == 0
    before = enc.read_bytes()
    code, _, err = cli(capsys, "query", "--db", str(enc))
    assert code == 9 and "looks encrypted" in err
    code, _, err = cli(capsys, "check", str(enc), "--key-file", str(tmp_path / "other"))
    assert code == 9 and "does not open" in err and "not a database" not in err
    assert enc.read_bytes() == before


def test_exit_130_interrupted(tmp_path: Path, broker: Broker) -> None:
    """Row 130: Ctrl-C (SIGINT) while waiting for an answer exits 130 without a traceback."""
    # A test run started as a background job inherits SIGINT ignored (POSIX shells do that to
    # asynchronous commands), and so would the child: give it the default, as a terminal would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "query", "--host", broker.host, "--port",
         str(broker.port), "--timeout", "60"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={k: v for k, v in os.environ.items()
                                     if not k.startswith("KAIRO_SIDECAR_")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert broker.log_path is not None
        wait_until(lambda: "as kairo-client-" in broker.log_path.read_text(errors="replace"),
                   timeout=20)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in err


def test_exit_141_reader_gone(tmp_path: Path) -> None:
    """Row 141: `export | head -1` stops quietly when head goes away: no BrokenPipeError."""
    db = create_db(tmp_path / "s.db", [event(i) for i in range(5000)])  # ~1.5 MB of output
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIRO_SIDECAR_")}
    for command in (["export"], ["query", "--all", "--limit", "1000"]):
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", *command, "--db", str(db)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["id"] == "e-0000000"
        proc.stdout.close()  # the reader goes away with most of the output unread
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 141, err
        assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_check_piped_into_head_is_quiet(tmp_path: Path) -> None:
    """`kairo-sidecar check | head -1` through a real shell pipe prints no traceback."""
    db = create_db(tmp_path / "s.db", rows(3))
    result = subprocess.run(f"{sys.executable} -m sidecar check --db {db} | head -1",
                            shell=True, cwd=ROOT, capture_output=True, timeout=60)
    assert result.stdout.startswith(b"database") and b"Traceback" not in result.stderr


# ------------------------------------------------------------------------------ messages
def test_unknown_option_names_the_command_and_suggests(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped flag names the sub-command and the closest option."""
    code, out, err = cli(capsys, "query", "--corelation-id", "x")
    assert code == 2 and out == ""
    assert err.splitlines()[0] == ("kairo-sidecar query: unknown option --corelation-id "
                                   "(did you mean --correlation-id?)")


def test_choices_take_any_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--order DESC works; a wrong value lists the allowed ones in our words."""
    db = str(create_db(tmp_path / "s.db", rows(3)))
    code, out, _ = cli(capsys, "query", "--db", db, "--order", "DESC")
    assert code == 0 and ids(out) == ["e-0000002", "e-0000001", "e-0000000"]
    code, _, err = cli(capsys, "query", "--db", db, "--order", "up")
    assert code == 2 and "--order: 'up' is not allowed: use \"asc\" or \"desc\"" in err


def test_config_choices_take_any_case(tmp_path: Path) -> None:
    """synchronous = "full" is FULL; a wrong value names the key and lists the choices."""
    path = tmp_path / "sidecar.toml"
    path.write_text('[database]\nsynchronous = "full"\nstartup_check = "Quick"\n'
                    '[log]\nlevel = "DEBUG"\n')
    config = load_config(path, environ={})
    assert config.database.synchronous == "FULL" and config.log.level == "debug"
    assert load_config(environ={"KAIRO_SIDECAR_DATABASE__SYNCHRONOUS": "extra"}
                       ).database.synchronous == "EXTRA"
    path.write_text('[database]\nsynchronous = "fulll"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "database.synchronous"
    assert str(info.value).endswith(
        "database.synchronous: 'fulll' is not allowed: use \"OFF\", \"NORMAL\", \"FULL\" or "
        "\"EXTRA\"")
