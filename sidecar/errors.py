"""Typed errors, each with structured attributes; the CLI turns them into exit codes."""

from __future__ import annotations


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""

    exit_code = 1


class ConfigError(SidecarError):
    """A configuration file or environment variable is invalid."""

    exit_code = 2

    def __init__(self, message: str, *, source: str, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + message)


class PayloadError(SidecarError):
    """An MQTT message could not be turned into an event (it goes to dead_letters)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StorageError(SidecarError):
    """The database cannot be opened or used."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class SchemaTooNewError(StorageError):
    """The database was migrated by a newer kairo-sidecar than this one."""

    exit_code = 4

    def __init__(self, *, path: str | None, unknown: list[str]) -> None:
        self.unknown = unknown
        super().__init__(
            f"database {path} has migrations this version does not know: {', '.join(unknown)}; "
            "upgrade kairo-sidecar (or restore a backup made by this version)",
            path=path,
        )


class PendingMigrationsError(StorageError):
    """The database needs migrations and this process may not apply them (``migrate_on_start =
    false``)."""

    def __init__(self, *, path: str, pending: list[str]) -> None:
        self.pending = pending
        super().__init__(f"database needs migrations {pending}: run `kairo-sidecar migrate` or "
                         "set [database] migrate_on_start = true", path=path)


class CorruptDatabaseError(StorageError):
    """The database file is damaged (an integrity check failed); it is left untouched."""

    exit_code = 6

    def __init__(self, *, path: str, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        super().__init__(
            f"database {path} is damaged ({shown}); it was left untouched. Run `kairo-sidecar check` "
            f"for details, then `kairo-sidecar recover {path} NEW.db` to salvage what can be read "
            "and point [database] url at NEW.db (or restore a backup)",
            path=path,
        )


class EncryptionKeyError(StorageError):
    """The database key is wrong or missing: an encrypted file opened without its key (or with
    another), or a plain file opened with a key. The file is left untouched."""

    exit_code = 9


class DatabaseBusyError(StorageError):
    """Another process kept the database locked for longer than the retry deadline."""

    exit_code = 7


class RecoveryLossError(SidecarError):
    """``recover`` wrote a sound DEST, but the source held rows it could not read (or it
    cannot tell how many): distinct from 6, which means the file was not even worked on."""

    exit_code = 8

    def __init__(self, *, dest: str, lost: dict[str, int | None], exact: bool = True) -> None:
        self.dest = dest
        self.lost = lost  # table -> rows lost (None: unknown); upper bounds unless ``exact``
        self.exact = exact
        known = sum(n for n in lost.values() if n is not None)
        parts = ", ".join(f"{table} {'an unknown number' if n is None else n}"
                          for table, n in lost.items())
        super().__init__(
            f"recover lost {'' if exact else 'up to '}{known} rows ({parts}) that could not be "
            f"read; {dest} holds every row that could. Keep the damaged file (and look for a "
            "backup) before using it"
        )


class UsageError(SidecarError):
    """The command line is wrong: an unknown option, a value that cannot be read, options that
    do not go together. ``command`` is the sub-command (``query``), ``option`` the flag."""

    exit_code = 2

    def __init__(self, message: str, *, command: str | None = None,
                 option: str | None = None) -> None:
        self.command = command
        self.option = option
        self.message = message
        super().__init__(f"{option}: {message}" if option else message)


class FilterError(SidecarError):
    """An event filter cannot be used: a bad glob, topic filter, time or ``where`` key, found
    by storage (``queries.conditions``) or a dead-letter filter (``letters``). ``field`` names
    it (``type[0]``, ``until``, ``where.payload.x``) and ``message`` starts with it. The API
    answers it as ``bad_request`` on ``field``; on the command line it is exit 2."""

    exit_code = 2

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


class DestinationExistsError(SidecarError):
    """A command would replace an existing file (``backup DEST``) without ``--force``."""

    exit_code = 2

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} already exists: choose a new name or pass --force")


class NotApplicableError(SidecarError):
    """A command that works on an SQLite file only (``backup``, ``recover``) was pointed at
    another engine; the message says what to use instead. Exit 2, as a wrong command line."""

    exit_code = 2

    def __init__(self, message: str, *, command: str) -> None:
        self.command = command
        super().__init__(message)


class InputFileError(SidecarError):
    """A file given on the command line (``import FILE``) is not what the command reads."""

    exit_code = 2


class BrokerError(SidecarError):
    """The MQTT broker cannot be reached or refused the connection."""

    exit_code = 5


class RequestError(SidecarError):
    """A request over the API cannot be served; ``code`` goes into the error answer
    (``bad_request``, ``not_found``, ``busy``, ``too_large``, ``unknown_op``, ``internal``).
    On the client side it is raised with the code and message the sidecar answered."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        self.code = code
        self.message = message
        self.field = field
        # a request the sidecar cannot read is the caller's mistake, like a bad option
        self.exit_code = 2 if code == "bad_request" else 1
        super().__init__(f"{code}: {message}")
