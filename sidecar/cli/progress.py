"""The one progress line of the long CLI commands (export, import, recover, purge, backup,
replay), drawn on standard error only when it is a terminal: nothing on a pipe, in a file or in
a test log.

With a known total: ``export [#########.....]  62.5%  6,250/10,000 events  ETA 0:03``; without:
``purge 1,234 steps  410/s``. Redrawn in place (``\\r`` and erase-line) at most 5 times a
second; ``close()`` draws the final state and ends the line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

INTERVAL = 0.2  # seconds between redraws: at most 5 a second
BAR = 24


class Progress:
    """``update(done)`` (or ``advance(n)``) redraws the line when ``INTERVAL`` has passed;
    ``note(text)`` prints a line of its own under it; ``close()`` ends it. A context manager."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "",
                 stream: TextIO | None = None, amount: Callable[[int], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self.detail: str | None = None
        self._amount = amount or (lambda n: f"{n:,}")
        self._clock = clock
        self._started = clock()
        self._drawn: float | None = None
        self._closed = False

    # ------------------------------------------------------------------ feeding it
    def update(self, done: int, total: int | None = None, *, detail: str | None = None) -> None:
        """``done`` so far (of ``total``, when it becomes known or changes)."""
        self.done = done
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail = detail
        self._maybe_draw()

    def advance(self, n: int = 1, *, detail: str | None = None) -> None:
        """``n`` more done."""
        self.update(self.done + n, detail=detail)

    def note(self, text: str) -> None:
        """A message on a line of its own; the progress line goes on below it."""
        if not self.enabled:
            return
        self._draw(self._clock())
        self.stream.write(f"\n{text}\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line (once; silent when not a terminal)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(self._clock())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ drawing
    def render(self, now: float | None = None) -> str:
        """The line as it is drawn now (without the carriage return)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-6)
        total = self.total
        if total:
            fraction = min(1.0, max(self.done, 0) / total)
            bar = "#" * int(fraction * BAR)
            line = (f"{self.label} [{bar:<{BAR}}] {fraction * 100:5.1f}%  "
                    f"{self._amount(self.done)}/{self._amount(total)}{self.unit}")
            if 0 < self.done < total:
                line += f"  ETA {_clock_time(elapsed / self.done * (total - self.done))}"
        else:
            rate = self.done / elapsed
            line = f"{self.label} {self._amount(self.done)}{self.unit}  {self._amount(int(rate))}/s"
        if self.detail:
            line += f"  {self.detail}"
        return line

    def _maybe_draw(self) -> None:
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if self._drawn is None or now - self._drawn >= INTERVAL:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn = now
        line = self.render(now)
        width = _width(self.stream)
        if width and len(line) >= width:
            line = line[: width - 1]  # a wrapped line could not be redrawn in place
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _width(stream: TextIO) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (AttributeError, ValueError, OSError):
        return None


def _clock_time(seconds: float) -> str:
    s = int(seconds + 0.5)
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
