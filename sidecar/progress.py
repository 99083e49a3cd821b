"""A one-line progress bar for long CLI commands, drawn only when the stream is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(done)`` redraws ``label [#####.....]  45%  1234/5678`` at most 10 times a second;
    ``close()`` ends the line. On a pipe or a file it stays silent."""

    def __init__(self, label: str, total: int | None, *, stream: TextIO | None = None,
                 unit: str = "") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.total = total
        self.unit = unit
        self._drawn = 0.0
        self.done = 0

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1 and (self.total is None or done < self.total):
            return
        self._drawn = now
        self.stream.write("\r" + self.render())
        self.stream.flush()

    def render(self, width: int = 30) -> str:
        total = self.total
        if not total:
            return f"{self.label} {self.done:,}{self.unit}"
        fraction = min(1.0, self.done / total)
        bar = "#" * int(fraction * width)
        return (f"{self.label} [{bar:<{width}}] {fraction * 100:5.1f}%  "
                f"{self.done:,}/{total:,}{self.unit}")

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.render() + "\n")
            self.stream.flush()
