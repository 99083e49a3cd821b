"""Projections: rules that fold events into key-value entries (``[[projections]]``).

A rule names the event ``type`` it folds (a glob as ``query`` takes: ``*`` any run, ``?`` one
character), a ``key`` template (``plugin/{payload.name}``, with ``{source}``, ``{type}`` and
``{payload.<path>}`` placeholders) and a ``mode``: ``set`` stores the event's payload (or the
path ``value`` names), ``merge`` shallow-merges the payload object into the stored object.

Everything here is pure: the compiled ``Projection`` renders an event's key and new value from
the stored one. ``sidecar.storage.projections`` applies it in the writer's transaction and
rebuilds it from the log. A rule owns every key under its template's static ``prefix`` (the
text before the first placeholder, never empty): two rules whose prefixes can overlap are
refused, and a rebuild deletes exactly the keys under its prefix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from sidecar.core import kv, paths
from sidecar.core.codecs import JSON_ENCODER
from sidecar.errors import RequestError

Mode = Literal["set", "merge"]
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
KV_EVENTS = "kairo.kv."  # kv.PUT_EVENT, kv.DELETE_EVENT
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ProjectionError(ValueError):
    """A rule that cannot be compiled; ``field`` is the rule's field to blame."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class Skip(NamedTuple):
    """An event a projection had to leave out, and why (in our words)."""

    seq: int
    reason: str


def _lookup(payload: Any, path: paths.JsonPath) -> tuple[bool, Any]:
    """``(found, value)`` of ``path`` (``payload.a[0]``) in the decoded payload."""
    node = payload
    for name, index in re.findall(r'\."([^"]+)"|\[(\d+)\]', path.path):
        if name:
            if not isinstance(node, dict) or name not in node:
                return False, None
            node = node[name]
        else:
            i = int(index)
            if not isinstance(node, list) or i >= len(node):
                return False, None
            node = node[i]
    return True, node


class _Part(NamedTuple):
    text: str  # static text, or the placeholder's name
    placeholder: bool
    path: paths.JsonPath | None  # for payload.<path>


class Projection:
    """One compiled rule; ``fold`` computes the entry an event makes."""

    def __init__(self, name: str, type_glob: str, key: str, *, mode: Mode = "set",
                 value: str | None = None) -> None:
        if not _NAME.match(name):
            raise ProjectionError(f"{name!r} must be 1-64 letters, digits, '_', '-' or '.'",
                                  field="name")
        if not type_glob or "[" in type_glob or "]" in type_glob:
            raise ProjectionError(f"{type_glob!r} must be a type or a glob with * and ? "
                                  "(no [ ])", field="type")
        if type_glob.startswith(KV_EVENTS):
            raise ProjectionError("the kv store's own events cannot be projected", field="type")
        self.name = name
        self.type_glob = type_glob
        self.mode = mode
        self.template = key
        self._type = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                                        for c in type_glob) + r"\Z", re.DOTALL)
        self._parts = self._parse_key(key)
        self.prefix = self._parts[0].text if not self._parts[0].placeholder else ""
        if not self.prefix:
            raise ProjectionError(f"{key!r} must start with static text (such as 'plugin/'): "
                                  "the keys under it belong to this projection", field="key")
        try:
            kv.check_prefix(self.prefix)
        except RequestError as exc:
            raise ProjectionError(f"{key!r}: {str(exc).removeprefix('key: ')}",
                                  field="key") from None
        self._value: paths.JsonPath | None = None
        if value is not None:
            if mode != "set":
                raise ProjectionError('only a "set" projection takes a value path', field="value")
            if not value.startswith("payload."):
                raise ProjectionError(f"{value!r} must be payload.<path>", field="value")
            try:
                self._value = paths.parse(value)
            except ValueError as exc:
                raise ProjectionError(str(exc), field="value") from None

    @staticmethod
    def _parse_key(key: str) -> list[_Part]:
        parts: list[_Part] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(key):
            if match.start() > pos:
                parts.append(_Part(key[pos:match.start()], False, None))
            name = match.group(1)
            path = None
            if name.startswith("payload."):
                try:
                    path = paths.parse(name)
                except ValueError as exc:
                    raise ProjectionError(f"placeholder {{{name}}}: {exc}", field="key") from None
            elif name not in ("source", "type"):
                raise ProjectionError(f"placeholder {{{name}}} must be {{source}}, {{type}} or "
                                      "{payload.<path>}", field="key")
            parts.append(_Part(name, True, path))
            pos = match.end()
        if pos < len(key):
            parts.append(_Part(key[pos:], False, None))
        if not parts:
            raise ProjectionError("must not be empty", field="key")
        if any("{" in p.text or "}" in p.text for p in parts if not p.placeholder):
            raise ProjectionError(f"{key!r} has an unclosed or nested placeholder", field="key")
        return parts

    def matches(self, event_type: str) -> bool:
        """Whether events of ``event_type`` fold; never the kv store's own events (a ``kv/put``
        records one, and ``kairo.*`` would otherwise fold them on a rebuild but not live)."""
        return self._type.match(event_type) is not None and not event_type.startswith(KV_EVENTS)

    def overlaps(self, other: Projection) -> bool:
        """Whether some key could belong to both (one prefix starts the other)."""
        return self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)

    def owns(self, key: str) -> bool:
        return key.startswith(self.prefix)

    def key_of(self, event_type: str, source: str, payload: Any) -> str:
        """The rendered key; ``ValueError`` (our words) when a placeholder is missing, not a
        string or integer, or the key breaks the key rules."""
        out: list[str] = []
        for part in self._parts:
            if not part.placeholder:
                out.append(part.text)
            elif part.path is None:
                out.append(source if part.text == "source" else event_type)
            else:
                found, value = _lookup(payload, part.path)
                if not found or value is None:
                    raise ValueError(f"key: {part.text} is missing")
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise ValueError(f"key: {part.text} is not a string or an integer")
                out.append(str(value))
        key = "".join(out)
        try:
            return kv.check_key(key)
        except RequestError as exc:
            raise ValueError(f"rendered key {key[:300]!r}: {str(exc).removeprefix('key: ')}") from None

    def value_of(self, payload: Any, payload_text: str, current: str | None) -> str:
        """The JSON text to store, given the stored value ``current`` (JSON text or None);
        ``ValueError`` when the event has no usable value."""
        if self.mode == "merge":
            if not isinstance(payload, dict):
                raise ValueError("payload: not an object, cannot be merged")
            base = msgspec.json.decode(current) if current is not None else None
            merged = {**base, **payload} if isinstance(base, dict) else payload
            return JSON_ENCODER.encode(merged).decode()
        if self._value is None:
            return payload_text
        found, value = _lookup(payload, self._value)
        if not found:
            raise ValueError(f"value: {self._value.key} is missing")
        return JSON_ENCODER.encode(value).decode()

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, {self.type_glob!r}, {self.template!r}, {self.mode!r})"


def refuse_owned(rules: Sequence[Projection], key: str, *, field: str = "key") -> None:
    """``bad_request`` naming ``field`` if a rule owns ``key``: a put or delete there would be
    undone by the rule's next event and by a rebuild (the log is the state's only source)."""
    for rule in rules:
        if rule.owns(key):
            raise RequestError(
                "bad_request", f"{field}: {key!r:.300} is under projection {rule.name!r} (prefix "
                f"{rule.prefix!r}), kept from events of type {rule.type_glob!r}: publish such an "
                "event, or use a key outside the prefix", field=field)


def check_all(rules: Sequence[Projection]) -> tuple[int, str, str] | None:
    """The first problem among ``rules`` taken together: ``(index, field, message)``."""
    for i, rule in enumerate(rules):
        for other in rules[:i]:
            if other.name == rule.name:
                return i, "name", f"{rule.name!r} is used twice"
            if rule.overlaps(other):
                return i, "key", (f"its keys (prefix {rule.prefix!r}) can overlap those of "
                                  f"projection {other.name!r} (prefix {other.prefix!r})")
    return None
