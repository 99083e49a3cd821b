"""systemd's notify protocol (sd_notify) and the watchdog the main loop feeds.

The protocol is one datagram per message (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``,
``STATUS=...``) on the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names an
abstract socket. Without ``$NOTIFY_SOCKET`` (not started by systemd) every call is a no-op.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from sidecar.logs import RateLimited, get_logger

log = get_logger("sidecar.notify")


def socket_address(path: str) -> str:
    """``@name`` (abstract namespace) -> ``"\\0name"``; a file system path stays as it is."""
    return "\0" + path[1:] if path.startswith("@") else path


class Notifier:
    """Sends sd_notify messages; never raises (systemd may be gone, the daemon must go on)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._error_log = RateLimited(period=60.0, burst=1)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one message (newline-separated); False if it could not be sent."""
        if self.path is None:
            return False
        if self.path.startswith("vsock:"):
            self._log_error("vsock notify sockets are not supported")
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), socket_address(self.path))
        except OSError as exc:
            self._log_error(exc.strerror or str(exc))
            return False
        return True

    def _log_error(self, error: str) -> None:
        allowed, suppressed = self._error_log.allow()
        if allowed:
            log.warning("sd_notify_failed", socket=self.path, error=error, suppressed=suppressed)

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def stall_after(*, flush_interval: float, busy_timeout: float, retry_max_delay: float,
                watchdog_sec: float) -> float:
    """How long the writer may go without looping before it counts as stuck: its longest
    legitimate gap (an idle wait, a flush interval, a locked database, a retry back-off) plus
    half the watchdog period (at most 10 s) for a slow commit or maintenance step."""
    return 0.5 + flush_interval + busy_timeout + retry_max_delay + min(10.0, watchdog_sec / 2)


class Watchdog:
    """Fed from the main loop: pings systemd every ``watchdog_sec / 2`` while ``health()``
    returns None, stops pinging (and says why in STATUS) while it returns a reason."""

    def __init__(self, notifier: Notifier, watchdog_sec: float,
                 health: Callable[[float], str | None]) -> None:
        self._notifier = notifier
        self.interval = watchdog_sec / 2
        self._health = health
        self._last_ping = float("-inf")
        self.withheld: str | None = None  # the reason pings are withheld, None while healthy

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        problem = self._health(now)
        if problem is not None:
            if self.withheld is None:
                log.error("watchdog_withheld", reason=problem,
                          hint="systemd restarts the service when WatchdogSec passes without a ping")
                self._notifier.status(f"unhealthy: {problem}")
            self.withheld = problem
            return
        if self.withheld is not None:
            log.warning("watchdog_resumed", after=self.withheld)
            self._notifier.status("healthy again")
            self.withheld = None
            self._last_ping = float("-inf")
        if now - self._last_ping >= self.interval:
            self._notifier.watchdog()
            self._last_ping = now
