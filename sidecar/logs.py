"""structlog set-up: JSON lines off a TTY (journald), a readable console on a TTY."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog

from sidecar.config import LogConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _Stderr:
    """``sys.stderr`` as it is at each write: a logger cached on first use keeps its stream,
    and whoever replaces ``sys.stderr`` later (in-process CLI tests) still gets the lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(config: LogConfig, *, stream: TextIO | None = None) -> None:
    """Configure structlog once for the process; stdlib loggers (paho, peewee) go the same way."""
    out: Any = stream if stream is not None else _Stderr()
    use_console = config.format == "console" or (config.format == "auto" and out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    level = _LEVELS[config.level]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Third-party stdlib logging (peewee-migrate) is quiet unless it warns.
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("peewee_migrate").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class RateLimited:
    """Let through at most ``burst`` log calls per ``period`` seconds; count the rest.

    ``allow()`` returns ``(True, suppressed_since_last)`` when a call may be logged.
    """

    def __init__(self, *, period: float = 10.0, burst: int = 5) -> None:
        self._period = period
        self._burst = burst
        self._window_start = 0.0
        self._count = 0
        self._suppressed = 0

    def allow(self) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._window_start >= self._period:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self._burst:
            self._suppressed += 1
            return False, 0
        suppressed, self._suppressed = self._suppressed, 0
        return True, suppressed
