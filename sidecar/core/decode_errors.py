"""Our own words for what a decoder refused.

msgspec says what is wrong in its own English, which changes between releases (0.23 reworded
invalid UTF-8 as ``Invalid UTF-8 encoded string``). Dead-letter reasons, request errors and
configuration errors must not change with a dependency, so nothing here passes msgspec's text
through: a validation error is read for its structure (the ``$.a.b`` path and the kind of
problem) and said again in our words; a decode error is examined on our side (UTF-8, where the
JSON stops parsing, a small MessagePack walk) to say what is wrong and where.
``tests/test_decode_errors.py`` pins each msgspec wording read here, so a release that changes
one fails that test instead of quietly degrading a message.
"""

from __future__ import annotations

import json
import re
import struct

_AT = re.compile(r" - at `\$(.*)`$")
_FIELD = re.compile(r"^Object (contains unknown|missing required) field `([^`]+)`")

_NOUNS = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "null": "null", "object": "an object", "array": "a list", "bytes": "bytes",
    "datetime": "a date-time", "uuid": "a UUID", "decimal": "a number", "None": "null",
}
_OPS = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$"), "type"),
    (re.compile(r"^Expected `([^`]+)` (>=|>|<=|<) (\S+)$"), "bound"),
    (re.compile(r"^Expected `([^`]+)` of length (>=|<=) (\d+)$"), "length"),
    (re.compile(r"^Expected `([^`]+)` matching regex "), "pattern"),
    (re.compile(r"^Expected `([^`]+)` that's a multiple of (\S+)$"), "multiple"),
    (re.compile(r"^Invalid enum value "), "enum"),
    (re.compile(r"^Number out of range$"), "range"),
)


def _noun(name: str) -> str:
    if " | " in name:
        return " or ".join(_noun(part) for part in name.split(" | "))
    return _NOUNS.get(name, name)


def _our_words(text: str) -> str:
    for pattern, kind in _RULES:
        match = pattern.match(text)
        if match is None:
            continue
        if kind == "type":
            return f"expected {_noun(match.group(1))}, got {_noun(match.group(2))}"
        if kind == "bound":
            return f"must be {_OPS[match.group(2)]} {match.group(3)}"
        if kind == "length":
            unit = "characters" if match.group(1) == "str" else "items"
            limit = "at least" if match.group(2) == ">=" else "at most"
            count = match.group(3)
            return f"must have {limit} {count} {unit.rstrip('s') if count == '1' else unit}"
        if kind == "pattern":
            return "is not in the expected form"
        if kind == "multiple":
            return f"must be a multiple of {match.group(2)}"
        if kind == "range":
            return "number out of range"
        return "is not one of the allowed values"
    return "invalid value"


def explain_validation(message: str) -> tuple[str, str, str]:
    """Read a msgspec ``ValidationError`` message as ``(kind, field, text)``, ``text`` ours.

    ``kind`` is ``"unknown"`` (a field not in the type), ``"missing"`` (a required field is
    absent) or ``"invalid"``; ``field`` is the dotted path of the offending field (``""`` at the
    top level); ``text`` says what is wrong in our words (``expected an integer, got a string``,
    ``must be at least 1``; ``invalid value`` for a problem we do not know how to name).
    """
    match = _AT.search(message)
    path = match.group(1).replace("[...]", "").lstrip(".") if match else ""
    text = message[: match.start()] if match else message
    named = _FIELD.match(text)
    if named is None:
        return "invalid", path, _our_words(text)
    field = f"{path}.{named.group(2)}" if path else named.group(2)
    if named.group(1) == "contains unknown":
        return "unknown", field, "unknown field"
    return "missing", field, "required"


# ------------------------------------------------------------------------------ decode errors
def describe(exc: Exception, data: bytes | bytearray | memoryview, fmt: str) -> str:
    """Our words for any msgspec decode or validation error raised while decoding ``data``:
    ``field: problem`` for a validation error, else what ``decode_failure`` finds."""
    import msgspec

    if isinstance(exc, msgspec.ValidationError):
        _, field, text = explain_validation(str(exc))
        return f"{field}: {text}" if field else text
    return decode_failure(data, fmt)


def decode_failure(data: bytes | bytearray | memoryview, fmt: str) -> str:
    """Why ``data`` is not valid ``fmt`` (``"json"`` or ``"msgpack"``), in our words.

    Called only after the decoder refused ``data``, so the cost is off the hot path."""
    if fmt == "msgpack":
        return msgpack_problem(bytes(data))
    # Undecodable bytes become lone surrogates, which the stdlib parser lets through inside a
    # string and refuses anywhere else: so a parse that gets past the first bad byte proves it
    # sat in a string, and an error before it is a JSON syntax error.
    text = bytes(data).decode("utf-8", "surrogateescape")
    bad = _SURROGATE.search(text)
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:  # structured: only its position is used
        if bad is None or exc.pos <= bad.start():
            return f"malformed JSON at character {exc.pos + 1}"
    except (ValueError, RecursionError):
        pass
    return "invalid UTF-8 in a string" if bad is not None else "malformed JSON"


_SURROGATE = re.compile("[\udc80-\udcff]")


class _Short(Exception):
    pass


def msgpack_problem(data: bytes) -> str:
    """Walk ``data`` as one MessagePack value and say what is wrong with it."""
    walker = _MsgpackWalk(data)
    try:
        walker.value(0)
    except _Utf8:
        return "invalid UTF-8 in a string"
    except _Short:
        return f"malformed MessagePack: data ends early (at byte {len(data)})"
    except _Bad as exc:
        return f"malformed MessagePack: {exc.args[0]}"
    if walker.pos != len(data):
        return f"malformed MessagePack: extra bytes after the value (at byte {walker.pos})"
    return "malformed MessagePack"


class _Bad(Exception):
    pass


class _Utf8(Exception):
    pass


_FIXED = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,
          0xCA: 4, 0xCB: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
_SIZED = {0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"), 0xD9: (1, "str"),
          0xDA: (2, "str"), 0xDB: (4, "str"), 0xC7: (1, "ext"), 0xC8: (2, "ext"),
          0xC9: (4, "ext"), 0xDC: (2, "array"), 0xDD: (4, "array"), 0xDE: (2, "map"),
          0xDF: (4, "map")}
_MAX_DEPTH = 1000


class _MsgpackWalk:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _Short
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def _length(self, width: int) -> int:
        value: int = struct.unpack({1: ">B", 2: ">H", 4: ">I"}[width], self._take(width))[0]
        return value

    def value(self, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Bad("nested too deeply")
        at = self.pos
        tag = self._take(1)[0]
        if tag <= 0x7F or tag >= 0xE0 or tag in (0xC0, 0xC2, 0xC3):
            return
        if 0x80 <= tag <= 0x8F:
            return self._items(2 * (tag & 0x0F), depth)
        if 0x90 <= tag <= 0x9F:
            return self._items(tag & 0x0F, depth)
        if 0xA0 <= tag <= 0xBF:
            return self._string(tag & 0x1F)
        if tag in _FIXED:
            self._take(_FIXED[tag])
            return None
        if tag in _SIZED:
            width, kind = _SIZED[tag]
            n = self._length(width)
            if kind == "str":
                return self._string(n)
            if kind == "array":
                return self._items(n, depth)
            if kind == "map":
                return self._items(2 * n, depth)
            self._take(n + (1 if kind == "ext" else 0))
            return None
        raise _Bad(f"byte 0x{tag:02x} at byte {at} starts no value")

    def _items(self, count: int, depth: int) -> None:
        for _ in range(count):
            self.value(depth + 1)

    def _string(self, n: int) -> None:
        try:
            self._take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _Utf8 from None
