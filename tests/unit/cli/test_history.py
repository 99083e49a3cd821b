"""The history CLI helpers: argument -> request body, progress line, --db limits."""

from __future__ import annotations

import argparse
import io
import os
import signal

import pytest

from sidecar.cli import history
from sidecar.cli.progress import Progress
from sidecar.config import load_config
from sidecar.errors import RequestError, UsageError
from tests.conftest import wait_until


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    history.add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def test_filter_arguments_become_the_request_body():
    """Repeated --type is a list, --where values parse as JSON when they can, times as epoch ms."""
    args = parse("query", "--type", "a.*", "--type", "b", "--source", "s", "--since", "1700",
                 "--until", "2026-01-01T00:00:00Z", "--where", "payload.n=5",
                 "--where", 'payload.code="5"', "--where", "metadata.who=ann")
    body = history._filter_body(args)
    assert body["type"] == ["a.*", "b"] and body["source"] == "s"
    assert body["since"] == 1700 and body["until"] == 1_767_225_600_000
    assert body["where"] == {"payload.n": 5, "payload.code": "5", "metadata.who": "ann"}


def test_where_without_equals_is_a_bad_request():
    """--where needs PATH=VALUE."""
    with pytest.raises(RequestError) as info:
        history._filter_body(parse("query", "--where", "payload.n"))
    assert info.value.field == "where"


def test_db_replay_refuses_options_that_need_a_sidecar(tmp_path):
    """replay --db with --live (or --rate/--pace) is refused before reading anything."""
    args = parse("replay", "--db", str(tmp_path / "none.db"), "--live")
    with pytest.raises(UsageError, match="--live: needs a running sidecar"):
        history.cmd_replay(args, load_config(environ={}))


def test_progress_line_counts_events():
    """replay's progress line (the shared Progress) shows the count, the rate and the last seq,
    and ends with a newline."""
    out = _Terminal()
    progress = Progress("replay", unit=" events", stream=out)
    for seq in range(1, 1235):
        progress.advance(detail=f"seq {seq}")
    progress.close()
    assert "1,234 events" in out.getvalue() and "/s" in out.getvalue()
    assert "seq 1234" in out.getvalue() and out.getvalue().endswith("\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_a_replay_like_ctrl_c(sig: signal.Signals):
    """While a replay runs, SIGTERM/SIGHUP raise _Stopped (no Exception, so only the clean-up
    runs) with the signal number; the previous handlers are back afterwards."""
    before = signal.getsignal(sig)
    with pytest.raises(history._Stopped) as info, history._stop_signals():
        os.kill(os.getpid(), sig)
        wait_until(lambda: False, timeout=5, message="the signal handler")
    assert info.value.signum == sig and not isinstance(info.value, Exception)
    assert signal.getsignal(sig) is before
