"""Walking decoded configuration data (TOML/JSON) the way a msgspec type describes it.

``units`` (``"30d"`` -> seconds) and ``choices`` (``"full"`` -> ``"FULL"``) both rewrite some
values of a decoded config before msgspec validates it, each at the leaves it owns: ``walk``
is the one traversal they share (Struct fields by their encoded names, list items, ``Annotated``
and ``X | None``), with the dotted path of every value for the error messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

import msgspec

SKIP: Any = object()  # what a leaf function returns for a value it does not rewrite

Leaf = Callable[[Any, Any, str], Any]  # (value, type, dotted key) -> new value or SKIP


def walk(value: Any, type_: Any, leaf: Leaf, key: str = "") -> Any:
    """``value`` with every part that ``leaf`` rewrites replaced; ``leaf`` is asked first at
    each level, and the walk goes on inside what it skips."""
    done = leaf(value, type_, key)
    if done is not SKIP:
        return done
    origin = get_origin(type_)
    if origin is Annotated:
        return walk(value, get_args(type_)[0], leaf, key)
    struct = struct_of(type_)
    if struct is not None and isinstance(value, dict):
        out = dict(value)
        for field in msgspec.structs.fields(struct):
            if field.encode_name in out:
                name = f"{key}.{field.encode_name}" if key else field.encode_name
                out[field.encode_name] = walk(out[field.encode_name], field.type, leaf, name)
        return out
    if origin is list and isinstance(value, list):
        (item,) = get_args(type_)
        return [walk(v, item, leaf, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def struct_of(type_: Any) -> type[msgspec.Struct] | None:
    """The Struct type of ``type_`` (itself, or a member of ``X | None``), or None."""
    candidates = get_args(type_) if get_origin(type_) is not None else (type_,)
    for member in candidates:
        if isinstance(member, type) and issubclass(member, msgspec.Struct):
            return member
    return None
