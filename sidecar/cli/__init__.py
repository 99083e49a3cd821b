"""The ``kairo-sidecar`` command line: a thin layer over the library."""

from sidecar.cli.main import main

__all__ = ["main"]
