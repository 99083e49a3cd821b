"""Key-value entries: the typed row, the key rules and the write the writer thread applies.

A key is a non-empty UTF-8 string of at most ``MAX_KEY_BYTES`` bytes; ``/`` separates
namespaces (``plugin/weather``); the MQTT wildcards ``+`` and ``#`` and NUL are refused, so a
key is always a valid last part of a topic (``<base>/kv/state/<key>``). A value is any JSON,
stored as JSON text, at most ``[kv] max_value_bytes`` encoded.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sidecar.core.codecs import JSON_ENCODER
from sidecar.errors import RequestError

MAX_KEY_BYTES = 256
PUT_EVENT = "kairo.kv.put"
DELETE_EVENT = "kairo.kv.delete"
EVENT_SOURCE = "kairo-sidecar"


class KvEntry(msgspec.Struct, frozen=True):
    """One key's state: ``value`` is JSON text (``None`` for a deleted key, in the outcome of a
    delete: ``version`` is then the version deleted)."""

    key: str
    value: str | None
    version: int
    updated_at: int  # ms since the epoch


class KvWrite(msgspec.Struct, frozen=True, kw_only=True):
    """A put (``value`` JSON text) or delete of one key, maybe conditional on ``if_version``
    (0: only if absent). ``same_is_noop``: a put of the value already stored changes nothing
    (the MQTT ``kv/set`` form, where a redelivered or retained copy must not make a version)."""

    op: Literal["put", "delete"]
    key: str
    value: str | None = None
    if_version: int | None = None
    same_is_noop: bool = False


def check_key(key: str, *, field: str = "key") -> str:
    """``key`` if it is a valid key, else ``bad_request`` naming ``field``."""
    if not key:
        raise RequestError("bad_request", f"{field}: must not be empty", field=field)
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise RequestError("bad_request", f"{field}: {size} bytes, at most {MAX_KEY_BYTES}",
                           field=field)
    for bad, name in (("+", "'+'"), ("#", "'#'"), ("\x00", "NUL")):
        if bad in key:
            raise RequestError("bad_request", f"{field}: must not contain {name}", field=field)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("bad_request", f"{field}: not valid UTF-8", field=field) from None
    return key


def check_prefix(prefix: str, *, field: str = "prefix") -> str:
    """A key prefix: empty (every key) or a valid key start."""
    return check_key(prefix, field=field) if prefix else prefix


def check_value(value_json: bytes, *, max_bytes: int, field: str = "value") -> str:
    """Encoded JSON ``value_json`` as the text to store, or ``too_large`` naming ``field``."""
    if len(value_json) > max_bytes:
        raise RequestError("too_large", f"{field}: {len(value_json)} bytes of JSON, at most "
                           f"{max_bytes} ([kv] max_value_bytes)", field=field)
    return value_json.decode()


def put_write(key: str, value: object, *, if_version: int | None, max_bytes: int) -> KvWrite:
    """The checked ``KvWrite`` of a put of ``value`` (any JSON-able value) under ``key``."""
    check_key(key)
    try:
        encoded = JSON_ENCODER.encode(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError("bad_request", "value: cannot be stored as JSON", field="value") from None
    return KvWrite(op="put", key=key, value=check_value(encoded, max_bytes=max_bytes),
                   if_version=if_version)
