"""Options and values every ``kairo-sidecar`` command shares, parsed one way.

* ``add_database_options``: ``--config PATH`` and ``--db PATH`` (the database file, instead of
  ``[database] url``); ``load`` turns them into the ``Config`` a command runs with.
* ``parse_time``: ``--since``/``--until`` as an age (``30d``, ``12h``, ``90m``: that long ago),
  an RFC 3339 time or epoch milliseconds, for every command that takes a time.
* ``choice``: an option with a fixed list of values, accepted in any case.
* ``Parser``: argparse errors become ``UsageError`` (exit 2) naming the sub-command, and an
  unknown option gets the closest known one as a suggestion.
"""

from __future__ import annotations

import argparse
import difflib
import re
import time
from collections.abc import Callable, Sequence
from typing import NoReturn
from urllib.parse import quote

import msgspec

from sidecar.config import Config, load_config
from sidecar.core.choices import ChoiceError, pick
from sidecar.core.events import parse_timestamp
from sidecar.core.units import FOREVER, parse_duration
from sidecar.errors import PayloadError, UsageError

TIME_HELP = "an age such as 30d, 12h or 90m (that long ago), an RFC 3339 time, or epoch ms"


# ------------------------------------------------------------------------------ options
def add_database_options(parser: argparse.ArgumentParser, *, db_help: str | None = None) -> None:
    """``--config PATH`` and ``--db PATH|URL`` (which wins over ``[database] url``)."""
    add_config_option(parser)
    parser.add_argument("--db", metavar="PATH", help=db_help or "database file or "
                        "postgresql:// URL (default: [database] url of the configuration)")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: built-in "
                        "defaults, overridden by KAIRO_SIDECAR_<SECTION>__<KEY> variables)")
    parser.add_argument("--key-file", metavar="PATH", help="the encrypted database's key file "
                        "(instead of [database] key_file; README \"Encryption at rest\")")


def database_url(path: str) -> str:
    """The ``[database] url`` for ``--db``: a URL (``postgresql://…``, ``sqlite:///…``) as it
    is, otherwise the URL naming the file ``path`` (relative or absolute)."""
    if "://" in path:
        return path
    return "sqlite:///" + quote(path, safe="/")


def load(args: argparse.Namespace) -> Config:
    """The configuration of ``--config``, with ``--db`` (when given) as the database."""
    config = load_config(getattr(args, "config", None))
    db = getattr(args, "db", None)
    if db:
        database = msgspec.structs.replace(config.database, url=database_url(db))
        config = msgspec.structs.replace(config, database=database)
    key_file = getattr(args, "key_file", None)
    if key_file:
        database = msgspec.structs.replace(config.database, key_file=key_file, key=None)
        config = msgspec.structs.replace(config, database=database)
    return config


# ------------------------------------------------------------------------------ values
_NUMBER = re.compile(r"\d+(\.\d+)?")


def parse_time(value: str | None, option: str, *, now_ms: int | None = None) -> int | None:
    """``--since 30d`` (30 days ago), ``2026-11-22T10:00:00Z`` or ``1763805600000`` -> epoch
    ms; ``None`` stays ``None``. ``UsageError`` naming ``option`` when it is none of these."""
    if value is None:
        return None
    text = value.strip()
    try:
        if _NUMBER.fullmatch(text):
            return parse_timestamp(float(text) if "." in text else int(text), option)
        if text[:1].isdigit() and text.lower() not in FOREVER and "-" not in text:
            try:
                seconds = parse_duration(text)
            except ValueError:
                pass
            else:
                now = int(time.time() * 1000) if now_ms is None else now_ms
                return parse_timestamp(now - int(seconds * 1000), option)
        return parse_timestamp(text, option)
    except PayloadError:
        raise UsageError(f"{value[:64]!r} is not a time: use {TIME_HELP}", option=option) from None


def choice(allowed: Sequence[str]) -> Callable[[str], str]:
    """An argparse ``type`` accepting ``allowed`` in any case (``--order DESC``)."""

    def convert(value: str) -> str:
        try:
            return pick(value, allowed)
        except ChoiceError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = "choice"
    return convert


# ------------------------------------------------------------------------------ parser
class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are ``UsageError`` (the CLI prints them, exit 2)."""

    def error(self, message: str) -> NoReturn:
        text = _our_words(message)
        if text.startswith("unknown command "):
            names = [n for a in self._actions if isinstance(a, argparse._SubParsersAction)
                     for n in a.choices]
            close = difflib.get_close_matches(message.split("'")[1], names, n=1)
            text += f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(text, command=self.prog)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is a ``UsageError`` naming the sub-command and the
    closest option it has."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = _subparser(parser, getattr(args, "command", None)) or parser
        raise UsageError(_unknown(extras, sub), command=sub.prog)
    return args


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            found: argparse.ArgumentParser = action.choices[name]
            return found
    return None


def _unknown(extras: list[str], parser: argparse.ArgumentParser) -> str:
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    for extra in extras:
        if extra.startswith("-") and extra != "-":
            name = extra.split("=", 1)[0]
            close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"unknown option {name}{hint}"
    return f"unexpected argument {extras[0]!r}"


_REWRITES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"argument command: invalid choice: '([^']*)'.*"),
     lambda m: f"unknown command {m.group(1)!r}"),
    (re.compile(r"argument (\S+?): invalid int value: '(.*)'"),
     lambda m: f"{m.group(1)}: {m.group(2)!r} is not a whole number"),
    (re.compile(r"argument (\S+?): invalid float value: '(.*)'"),
     lambda m: f"{m.group(1)}: {m.group(2)!r} is not a number"),
    (re.compile(r"argument (\S+?): expected one argument"),
     lambda m: f"{m.group(1)} needs a value"),
    (re.compile(r"argument (\S+?): (.*)"), lambda m: f"{m.group(1)}: {m.group(2)}"),
    (re.compile(r"the following arguments are required: (.*)"),
     lambda m: f"missing {m.group(1)}"),
]


def _our_words(message: str) -> str:
    """argparse's message -> ours (the option first, then what is wrong with it)."""
    for pattern, rewrite in _REWRITES:
        match = pattern.fullmatch(message)
        if match:
            return rewrite(match)
    return message


def describe_usage_error(exc: UsageError) -> str:
    """The lines the CLI prints for a usage error."""
    command = exc.command or "kairo-sidecar"
    return f"{command}: {exc}\n(`{command} --help` lists the options)"


__all__ = ["Parser", "add_config_option", "add_database_options", "choice", "database_url",
           "describe_usage_error", "load", "parse", "parse_time"]
