"""What storage needs to know about an event filter, without the API's wire types.

``Filter`` is the shape ``storage.queries.conditions`` reads: the API's ``QueryRequest`` and
``ReplayRequest`` (``api.protocol``, msgspec Structs with the wire limits) have these fields, and
so does anything else that filters events (the CLI's ``export``). Values arrive checked for type
and length; what only storage can judge (globs, topic filters, times, ``where`` keys, integer
range) raises ``errors.FilterError`` there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

MAX_INT64 = 2**63 - 1  # SQLite's largest INTEGER (and seq)


class Filter(Protocol):
    """The fields of an event filter (all optional: ``None`` matches everything)."""

    @property
    def type(self) -> str | Sequence[str] | None: ...  # exact types or globs (* and ?)

    @property
    def source(self) -> str | Sequence[str] | None: ...

    @property
    def topic(self) -> str | None: ...  # an MQTT topic filter (+ and #)

    @property
    def since(self) -> int | str | None: ...  # epoch ms or RFC 3339, inclusive

    @property
    def until(self) -> int | str | None: ...  # exclusive

    @property
    def correlation_id(self) -> str | None: ...

    @property
    def causation_id(self) -> str | None: ...

    @property
    def trace_id(self) -> str | None: ...

    @property
    def after(self) -> int | None: ...  # the keyset cursor: a seq

    @property
    def where(self) -> Mapping[str, Any] | None: ...  # payload.<path>/metadata.<path> -> value
