"""Ctrl-C is never lost while a command runs.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the main thread happens to be. Code
that turns a failed import into ``ImportError`` can swallow it: peewee imports ``psycopg2``
optionally, and an interrupt that lands inside the driver's C module initialisation comes out
as an ``ImportError`` peewee ignores. The command then went on and waited for its answer's
whole ``--timeout``. So while a command runs, SIGINT raises ``KeyboardInterrupt`` and, unless a
command has handled one ``RETRY`` seconds later (``handled``), raises it again.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

RETRY = 0.5  # seconds until an interrupt nobody handled is raised again

_pending = threading.Event()
Handler = Callable[[int, Any], Any] | int | None


def install() -> Handler:
    """Take over SIGINT (main thread only; left alone when SIGINT is ignored, as in a
    background job). Returns what to give ``restore``."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        return None
    _pending.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    return previous


def handled() -> None:
    """A ``KeyboardInterrupt`` reached the code that acts on it: no second one."""
    _pending.clear()


def restore(previous: Handler) -> None:
    """The command is over: SIGINT back to ``previous``, no interrupt pending."""
    _pending.clear()
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous)


def _on_sigint(signum: int, frame: object) -> None:
    if not _pending.is_set():
        _pending.set()
        timer = threading.Timer(RETRY, _again)
        timer.daemon = True
        timer.start()
    raise KeyboardInterrupt


def _again() -> None:
    if _pending.is_set():  # swallowed on its way: once more
        _pending.clear()
        os.kill(os.getpid(), signal.SIGINT)
