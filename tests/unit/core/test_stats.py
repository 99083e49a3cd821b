"""The writer's lock-free histograms and the dead-letter reason kinds /metrics counts by."""

from __future__ import annotations

from sidecar.core.reasons import DEAD_LETTER_KINDS, dead_letter_kind
from sidecar.core.stats import Buckets


def test_buckets_are_cumulative_with_inf_last() -> None:
    """Observations land in the first bound >= them; cumulative() ends with (inf, count)."""
    b = Buckets((1.0, 10.0))
    for value in (0.5, 1.0, 3.0, 10.0, 11.0):
        b.observe(value)
    assert b.cumulative() == [(1.0, 2), (10.0, 4), (float("inf"), 5)]
    assert b.count == 5 and b.sum == 25.5


def test_dead_letter_kinds_cover_every_reason_the_sidecar_writes() -> None:
    """Each reason the ingest path writes maps to its kind; anything else is a payload error."""
    assert dead_letter_kind("conflict: id 'x' is already stored (seq 3) with a different body") \
        == "conflict"
    assert dead_letter_kind("storage refused the event: IntegrityError()") == "storage"
    assert dead_letter_kind("kv set refused: value: not JSON") == "kv"
    assert dead_letter_kind("not a JSON object or a MessagePack map") == "payload"
    assert set(DEAD_LETTER_KINDS) == {"payload", "conflict", "storage", "kv"}
