"""JSON paths into an event: ``payload.a.b[0]`` / ``metadata.x``, as ``where``, ``latest``'s
``key``, ``[indexes] paths`` and a retention rule's ``keep_latest`` name them.

One grammar and one SQL spelling for all of them: an expression index is used only when the
query's expression is the index's, character for character (``json_extract(payload,
'$."a"')``), so both are built here.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

_KEY = re.compile(r"^(payload|metadata)((?:\.[A-Za-z0-9_\-]{1,128}|\[\d{1,6}\])+)$")
_SEGMENT = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]")

INDEX_PREFIX = "events_path_"  # every index ``[indexes] paths`` makes is named so


class JsonPath(NamedTuple):
    """``payload.a[0]`` -> column ``payload``, path ``$."a"[0]``."""

    key: str
    column: str
    path: str

    @property
    def sql(self) -> str:
        """The SQL expression (the path inlined: a bound parameter never matches an index)."""
        return f"json_extract({self.column}, '{self.path}')"

    @property
    def index_name(self) -> str:
        """A stable name for the index on this path: readable, and unique (a short digest of
        the key, since ``a-b`` and ``a_b`` read the same)."""
        readable = re.sub(r"[^A-Za-z0-9]+", "_", self.key).strip("_")[:48]
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:8]
        return f"{INDEX_PREFIX}{readable}_{digest}"


PATH_RULE = ("payload.<path> or metadata.<path> (letters, digits, _ and - per level, [n] for "
             "an array index)")


def path_error(key: str) -> str | None:
    """Why ``key`` is no JSON path, or None."""
    if not isinstance(key, str) or not _KEY.match(key):
        return f"{key!r} must be {PATH_RULE}"
    return None


def parts(path: JsonPath) -> list[str | int]:
    """The names and array indexes of ``path`` in order: ``payload.a[0]`` -> ``["a", 0]``."""
    match = _KEY.match(path.key)
    assert match is not None, path.key  # a JsonPath comes from parse()
    return [name if name else int(index) for name, index in _SEGMENT.findall(match.group(2))]


def parse(key: str) -> JsonPath:
    """``payload.a.b[0]`` -> ``JsonPath``; ``ValueError`` (``path_error``'s text) if malformed."""
    match = _KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} must be {PATH_RULE}")
    parts = [f'."{name}"' if name else f"[{index}]" for name, index in _SEGMENT.findall(match.group(2))]
    return JsonPath(key, match.group(1), "$" + "".join(parts))
