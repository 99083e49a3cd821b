"""Ctrl-C during a command: an interrupt something swallowed is raised again; one handled is not."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from sidecar.cli import interrupts


@pytest.fixture(autouse=True)
def _sigint_default() -> Iterator[None]:
    """A test run started as a background job inherits SIGINT ignored, and ``install`` then
    (rightly) leaves it alone: start from Python's own handler, as in a terminal."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _interrupt_swallowed() -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler raises here
    except KeyboardInterrupt:
        pass  # as an import guarded by ``except ImportError`` did with one inside a C module


def test_a_swallowed_interrupt_is_raised_again() -> None:
    """The first KeyboardInterrupt is lost on its way; RETRY seconds later a second one comes."""
    previous = interrupts.install()
    try:
        _interrupt_swallowed()
        with pytest.raises(KeyboardInterrupt):
            deadline = time.monotonic() + 10 * interrupts.RETRY
            while time.monotonic() < deadline:
                time.sleep(0.05)
        interrupts.handled()
    finally:
        interrupts.restore(previous)
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_handled_interrupt_is_not_raised_again() -> None:
    """Once the command has acted on it (``handled``), no second interrupt follows."""
    previous = interrupts.install()
    try:
        _interrupt_swallowed()
        interrupts.handled()
        time.sleep(3 * interrupts.RETRY)  # a second one would raise here
    finally:
        interrupts.restore(previous)
