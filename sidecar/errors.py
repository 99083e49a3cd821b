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


class BrokerError(SidecarError):
    """The MQTT broker cannot be reached or refused the connection."""

    exit_code = 5
