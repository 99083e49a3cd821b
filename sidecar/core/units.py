"""Human-friendly durations ("30d", "1h30m") and sizes ("512MiB") for the configuration.

``Duration`` (seconds, ``float``) and ``ByteSize`` (bytes, ``int``) are ``Annotated`` numbers, so
the decoded ``Config`` holds plain numbers (it encodes and compares as usual). ``parse_units``
turns the strings a user wrote into those numbers before msgspec validates the rest; its errors
carry the key's path so the config error names it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

import msgspec

from sidecar.core.shapes import SKIP, walk

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
FOREVER = ("forever", "never", "off", "none")


class _Unit:
    """Marks an ``Annotated`` number as given with a unit; ``parse`` reads the user's value."""

    def __init__(self, parse: Callable[[object], Any]) -> None:
        self.parse = parse


class UnitError(ValueError):
    """A value with a unit could not be read; ``key`` is its dotted path in the config."""

    def __init__(self, message: str, *, key: str) -> None:
        self.key = key
        super().__init__(message)


def parse_duration(value: object) -> float:
    """``30`` / ``"30"`` (seconds), ``"500ms"``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"30d"``,
    ``"2w"``; ``"forever"`` (or ``"off"``) is 0."""
    if isinstance(value, bool):
        raise TypeError(f"expected a duration such as \"30d\" or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in FOREVER:
            return 0.0
        seconds = _parse_duration_text(text, value)
    else:
        raise TypeError(f"expected a duration such as \"30d\" or a number of seconds, "
                        f"got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
    return seconds


def _parse_duration_text(text: str, original: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos and text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"invalid duration {original!r}: use a number with a unit "
                         "(ms, s, m, h, d, w), e.g. \"30d\", \"1h30m\", or \"forever\"")
    return total


def parse_size(value: object) -> int:
    """``1048576`` (bytes), ``"512MiB"``, ``"2GB"``, ``"1.5GiB"``, ``"64k"`` (k/M/G alone are
    binary, KB/MB/GB decimal); ``"off"``/``"none"`` is 0."""
    if isinstance(value, bool):
        raise TypeError(f"expected a size such as \"512MiB\" or a number of bytes, got {value!r}")
    if isinstance(value, int):
        number = float(value)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in FOREVER:
            return 0
        match = _SIZE.fullmatch(text)
        if match is None or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"invalid size {value!r}: use a number with a unit (B, KiB, MiB, GiB, "
                             "KB, MB, GB), e.g. \"512MiB\"")
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise TypeError(f"expected a size such as \"512MiB\" or a number of bytes, "
                        f"got {type(value).__name__}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"invalid size {value!r}: must be a finite number >= 0")
    return int(number)


MAX_FREE_PERCENT = 90.0


def parse_free_space(value: object) -> tuple[float, int]:
    """``[retention] min_free``: ``"10%"`` (a share of the file system) -> ``(10.0, 0)``;
    ``"2GiB"`` or a number of bytes -> ``(0.0, 2147483648)``; ``"off"``, ``0``, ``"0%"`` ->
    ``(0.0, 0)``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1].strip()
        try:
            percent = float(text)
        except ValueError:
            percent = math.nan
        if not math.isfinite(percent) or not 0 <= percent <= MAX_FREE_PERCENT:
            raise ValueError(f"invalid share {value!r}: use a percentage from 0% to "
                             f"{MAX_FREE_PERCENT:g}%, e.g. \"10%\"")
        return percent, 0
    try:
        return 0.0, parse_size(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid free space {value!r}: use a share of the file system such as "
                         "\"10%\", a size such as \"2GiB\", or \"off\"") from None


def format_free_space(percent: float, size: int) -> str:
    """The canonical text of ``parse_free_space``'s result: ``"10%"``, ``"2147483648"``,
    ``"off"`` (it parses back to the same value)."""
    if percent > 0:
        return f"{percent:g}%"
    return str(size) if size > 0 else "off"


def _free_space_text(value: object) -> str:
    return format_free_space(*parse_free_space(value))


SECONDS = _Unit(parse_duration)
"""The marker of a number of seconds given as a duration: ``Annotated[float, Meta(gt=0, le=60),
SECONDS]`` is a bounded ``Duration`` (the config accepts ``0.2``, ``"200ms"``, ``"5s"``)."""
Duration = Annotated[float, msgspec.Meta(ge=0), SECONDS]
"""Seconds; the config accepts ``30``, ``"90s"``, ``"1h30m"``, ``"30d"``, ``"forever"`` (0)."""
BYTES = _Unit(parse_size)
"""The marker of a number of bytes given as a size: ``Annotated[int, Meta(ge=256), BYTES]``."""
ByteSize = Annotated[int, msgspec.Meta(ge=0), BYTES]
"""Bytes; the config accepts ``1048576``, ``"512MiB"``, ``"2GB"``, ``"off"`` (0)."""
FreeSpace = Annotated[str, _Unit(_free_space_text)]
"""A share of a file system or a size, kept as canonical text (``"10%"``, ``"2147483648"``,
``"off"``) so the config stays plain data; read it with ``parse_free_space``."""


def parse_units(value: Any, type_: Any, key: str = "") -> Any:
    """Return ``value`` (decoded TOML/JSON for ``type_``) with every ``Duration``/``ByteSize``
    inside it parsed to a number; leave anything else for msgspec to validate."""
    return walk(value, type_, _parse_unit, key)


def _parse_unit(value: Any, type_: Any, key: str) -> Any:
    if get_origin(type_) is not Annotated:
        return SKIP
    for extra in get_args(type_)[1:]:
        if isinstance(extra, _Unit):
            try:
                return extra.parse(value)
            except (TypeError, ValueError) as exc:
                raise UnitError(str(exc), key=key) from None
    return SKIP


def format_duration(seconds: float) -> str:
    """``2592000`` -> ``"30d"``; 0 -> ``"forever"`` (for messages)."""
    if seconds <= 0:
        return "forever"
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """``536870912`` -> ``"512.0 MiB"`` (for messages)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
