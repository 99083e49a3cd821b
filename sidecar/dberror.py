"""What a database error really was, for the logs.

SQLite rolls a transaction back by itself on some errors (``SQLITE_FULL``, ``SQLITE_IOERR``,
``SQLITE_BUSY``, ``SQLITE_NOMEM``); Peewee's ``atomic()`` then issues its own ``ROLLBACK``,
which fails with "cannot rollback - no transaction is active" and replaces the real error. The
real one is still in the exception's context chain: ``describe`` finds it.
"""

from __future__ import annotations

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
