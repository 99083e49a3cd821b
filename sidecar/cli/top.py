"""``kairo-sidecar top``: the daemon's figures in the terminal, refreshed every second (plain
ANSI, for SSH). Reads ``/metrics`` of the local daemon (``[http] listen``), else asks for
``stats`` through the broker. ``q`` or Ctrl-C quits; ``--once`` prints one frame."""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from sidecar.cli import interrupts
from sidecar.cli.history import add_connection_options, connected
from sidecar.config import Config
from sidecar.core.units import format_size
from sidecar.errors import UsageError
from sidecar.http.scrape import Sample, fetch_metrics, from_stats, parse_metrics

CLEAR = "\x1b[H\x1b[2J"
BOLD, DIM, RED, GREEN, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[0m"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "top", help="live figures of the running daemon in the terminal",
        description="Rates, queue, commit latency and sizes of the local daemon, refreshed every "
                    "second; q or Ctrl-C quits. Reads /metrics ([http] listen), else the stats "
                    "request through the broker. Example: kairo-sidecar top --config "
                    "/etc/kairo-sidecar/sidecar.toml")
    p.add_argument("--url", help="the /metrics address (default: from [http] listen)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (rates since "
                   "start)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    add_connection_options(p)


def metrics_url(config: Config) -> str | None:
    address = config.http.address
    if address is None:
        return None
    host, port = address
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def _rate(now: float, before: float | None, seconds: float) -> float:
    return 0.0 if before is None or seconds <= 0 else max(0.0, now - before) / seconds


def render(cur: Sample, prev: Sample | None, *, color: bool = True) -> str:
    """One frame: rates over the interval since ``prev`` (since start without one)."""
    if prev is not None:
        span, base = cur.at - prev.at, prev
    else:
        span, base = (cur.uptime_s or 0.0), Sample(at=0, source=cur.source)
    b, d, r, g, x = (BOLD, DIM, RED, GREEN, RESET) if color else ("",) * 5

    def ok(flag: float | None, yes: str, no: str) -> str:
        if flag is None:
            return f"{d}?{x}"
        return f"{g}{yes}{x}" if flag else f"{r}{no}{x}"

    window = "since start" if prev is None else f"last {span:.1f}s"
    lines = [f"{b}kairo-sidecar top{x}  {d}{cur.source}, rates {window}, "
             f"{time.strftime('%H:%M:%S')}{x}",
             f"writer {ok(cur.writer_up, 'up', 'STALLED')}   broker "
             f"{ok(cur.broker_connected, 'connected', 'DISCONNECTED')}   uptime "
             f"{_duration(cur.uptime_s)}", ""]
    lines.append(f"{'events stored':<16}{cur.events_stored:>12.0f}   "
                 f"{_rate(cur.events_stored, base.events_stored, span):>10.1f}/s")
    lines.append(f"{'received':<16}{cur.received:>12.0f}   "
                 f"{_rate(cur.received, base.received, span):>10.1f}/s")
    lines.append(f"{'duplicates':<16}{cur.duplicates:>12.0f}   "
                 f"{_rate(cur.duplicates, base.duplicates, span):>10.1f}/s")
    lines.append(f"{'dead letters':<16}{cur.dead_letters:>12.0f}   "
                 f"{_rate(cur.dead_letters, base.dead_letters, span):>10.1f}/s")
    lines.append("")
    inflight = "-" if cur.inflight_acks is None else f"{cur.inflight_acks:.0f}"
    lines.append(f"{'queue depth':<16}{cur.queue_depth:>12.0f}   in-flight acks {inflight}")
    lines.append(f"{'commit latency':<16}{_commit(cur, prev):>12}   batch "
                 f"{_batch(cur, prev)}   lag {_seconds(cur.last_commit_lag_s)}")
    lines.append("")
    lines.append(f"{'database':<16}{format_size(int(cur.database_bytes)):>12}   "
                 f"WAL {format_size(int(cur.wal_bytes))}")
    if cur.written_bytes is not None:
        written = _rate(cur.written_bytes, base.written_bytes, span)
        lines.append(f"{'written':<16}{format_size(int(cur.written_bytes)):>12}   "
                     f"{format_size(int(written))}/s")
    lines.append(f"{'replay streams':<16}{cur.replay_streams:>12.0f}   purge "
                 f"{'-' if cur.purge_running is None else ('running' if cur.purge_running else 'idle')}")
    return "\n".join(lines) + "\n"


def _commit(cur: Sample, prev: Sample | None) -> str:
    if cur.commits is None or cur.commit_seconds_sum is None:
        return "-"
    n = cur.commits - (prev.commits or 0 if prev else 0)
    total = cur.commit_seconds_sum - (prev.commit_seconds_sum or 0 if prev else 0)
    return f"{total / n * 1000:.1f} ms" if n > 0 else "idle"


def _batch(cur: Sample, prev: Sample | None) -> str:
    if cur.commits is None or cur.batch_rows_sum is None:
        return "-"
    n = cur.commits - (prev.commits or 0 if prev else 0)
    rows = cur.batch_rows_sum - (prev.batch_rows_sum or 0 if prev else 0)
    return f"{rows / n:.0f} rows" if n > 0 else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms" if value < 10 else f"{value:.0f} s"


def _duration(value: float | None) -> str:
    if value is None:
        return "-"
    s = int(value)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    return f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


@contextlib.contextmanager
def _reader(args: argparse.Namespace, config: Config) -> Iterator[Callable[[], Sample]]:
    """Where the figures come from: ``--url`` or ``[http] listen``, else the broker."""
    url = args.url or metrics_url(config)
    if url is not None:
        token = config.http.token
        yield lambda: parse_metrics(fetch_metrics(url, token=token))
        return
    with connected(args, config) as client:
        yield lambda: from_stats(client.stats())


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """Single keypresses from the terminal (cbreak mode, restored after), or a plain wait."""
    if not sys.stdin.isatty():
        def wait(timeout: float) -> str | None:
            time.sleep(timeout)
            return None

        yield wait
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def key(timeout: float) -> str | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 1).decode(errors="replace") if ready else None

        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_top(args: argparse.Namespace, config: Config) -> int:
    if args.interval <= 0:
        raise UsageError("must be more than 0 seconds", option="--interval")
    with _reader(args, config) as read:
        if args.once:
            sys.stdout.write(render(read(), None, color=sys.stdout.isatty()))
            return 0
        prev: Sample | None = None
        try:
            with _keys() as key:
                while True:
                    cur = read()
                    sys.stdout.write(CLEAR + render(cur, prev))
                    sys.stdout.flush()
                    prev = cur
                    if key(args.interval) in ("q", "Q"):
                        return 0
        except KeyboardInterrupt:
            interrupts.handled()
            return 0
    return 0


COMMANDS = {"top": cmd_top}
