"""Values taken from a fixed list (``synchronous = "FULL"``, ``--order desc``), in any case.

The configuration and the command line both accept ``full``, ``Full`` or ``FULL`` for the
choice ``FULL``; a value that is none of them gets one message, in our words, listing what is
allowed. ``fold_choices`` rewrites a decoded config through ``shapes.walk``, as ``units`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args, get_origin

from sidecar.core.shapes import SKIP, walk


class ChoiceError(ValueError):
    """A value is not one of the allowed choices; ``key`` is its dotted path in the config."""

    def __init__(self, message: str, *, key: str = "") -> None:
        self.key = key
        super().__init__(message)


def allowed_text(allowed: Sequence[str]) -> str:
    """``("asc", "desc")`` -> ``"asc or desc"``; three or more: ``"a, b or c"``."""
    quoted = [f'"{a}"' for a in allowed]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def pick(value: str, allowed: Sequence[str], *, key: str = "") -> str:
    """The member of ``allowed`` that ``value`` names, compared without regard to case."""
    for choice in allowed:
        if value.strip().lower() == choice.lower():
            return choice
    raise ChoiceError(f"{value[:64]!r} is not allowed: use {allowed_text(allowed)}", key=key)


def literal_choices(type_: Any) -> tuple[str, ...] | None:
    """The strings of ``Literal["a", "b"]`` (also inside ``Annotated`` or ``X | None``)."""
    origin = get_origin(type_)
    if origin is Annotated:
        return literal_choices(get_args(type_)[0])
    if origin is Literal:
        members = get_args(type_)
        return members if all(isinstance(m, str) for m in members) else None
    for member in get_args(type_) if origin is not None else ():
        found = literal_choices(member)
        if found is not None:
            return found
    return None


def fold_choices(value: Any, type_: Any, key: str = "") -> Any:
    """Return ``value`` (decoded TOML/JSON for ``type_``) with every string given for a
    ``Literal`` field replaced by the allowed spelling; ``ChoiceError`` names the key."""
    return walk(value, type_, _fold, key)


def _fold(value: Any, type_: Any, key: str) -> Any:
    allowed = literal_choices(type_)
    if allowed is None:
        return SKIP
    return pick(value, allowed, key=key) if isinstance(value, str) else value
