"""SQLite errors: what one really was (``describe``), and SQLITE_BUSY from another process
(``retry_busy``).

SQLITE_BUSY from another process: wait with backoff and try again, never crash.

WAL lets readers and the writer work side by side; what still collides is two writers (the
daemon and a CLI ``purge``/``import``) or a checkpoint waiting for readers. ``busy_timeout``
absorbs short waits inside SQLite; ``retry_busy`` absorbs the rest up to a deadline, then raises
``DatabaseBusyError`` with a message that says who to look for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sidecar.errors import DatabaseBusyError
from sidecar.logs import get_logger
from sidecar.storage.cipher import ANY_OPERATIONAL_ERRORS

log = get_logger("sidecar.busy")

T = TypeVar("T")

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def is_busy(exc: BaseException) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED (also when Peewee wrapped the sqlite3 error)."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException) and orig is not exc:
        return is_busy(orig)
    if not isinstance(exc, ANY_OPERATIONAL_ERRORS):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "table is locked" in text


def retry_busy(fn: Callable[[], T], *, what: str, deadline: float = 120.0,
               path: str | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn`` until it does not fail with SQLITE_BUSY; back off 20 ms .. 1 s between tries.
    ``fn`` must be safe to repeat (one transaction that rolled back)."""
    started = time.monotonic()
    delay = 0.02
    tries = 0
    while True:
        try:
            return fn()
        except ANY_OPERATIONAL_ERRORS as exc:
            if not is_busy(exc):
                raise
            tries += 1
            waited = time.monotonic() - started
            if waited + delay > deadline:
                raise DatabaseBusyError(
                    f"database {path or ''} stayed locked for {waited:.0f}s while trying to {what}: "
                    "another process holds a write lock (a long import or purge?); try again later",
                    path=path) from exc
            if tries == 1 or tries % 20 == 0:
                log.info("database_busy_retrying", what=what, tries=tries, retry_in=delay)
            sleep(delay)
            delay = min(delay * 2, 1.0)


# ---------------------------------------------------------------- what an error really was
# SQLite rolls a transaction back by itself on some errors (SQLITE_FULL, SQLITE_IOERR,
# SQLITE_BUSY, SQLITE_NOMEM); Peewee's atomic() then issues its own ROLLBACK, which fails with
# "cannot rollback - no transaction is active" and replaces the real error. The real one is
# still in the exception's context chain: describe finds it.
_ROLLBACK_ARTEFACT = "no transaction is active"


def _sqlite_name(exc: BaseException) -> str | None:
    """``SQLITE_FULL`` ... of a sqlite3 error, or of the one a Peewee error wraps."""
    for candidate in (exc, getattr(exc, "orig", None), *(exc.args[:1] if exc.args else ()),
                      exc.__context__):
        name = getattr(candidate, "sqlite_errorname", None)
        if isinstance(name, str):
            return name
    return None


def describe(exc: BaseException) -> tuple[str, str | None]:
    """``(message, SQLite error name)`` of the error that caused ``exc``, looking past a failed
    ``ROLLBACK`` (e.g. ``("database or disk is full", "SQLITE_FULL")``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _ROLLBACK_ARTEFACT not in str(current):
            return str(current), _sqlite_name(current)
        current = current.__context__
    return str(exc), _sqlite_name(exc)
