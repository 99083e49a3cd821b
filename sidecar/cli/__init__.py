"""The ``kairo-sidecar`` command line: a thin layer over the library."""

from sidecar.cli.commands import main

__all__ = ["main"]
