"""The ``kairo-sidecar`` command line: a thin layer over the library."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.cli import interrupts


def main(argv: Sequence[str] | None = None) -> int:
    """The entry point: SIGINT is taken over before the command's modules are imported (an
    interrupt an import swallows is raised again: ``sidecar.cli.interrupts``)."""
    previous = interrupts.install()
    try:
        from sidecar.cli import commands

        return commands.main(argv)
    except KeyboardInterrupt:  # while importing
        interrupts.handled()
        return 130
    finally:
        interrupts.restore(previous)


__all__ = ["main"]
