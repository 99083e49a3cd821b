"""dead_letter: the row kept for a refused message."""

from __future__ import annotations

import pytest

from sidecar.core.events import DeadLetterRow
from sidecar.errors import PayloadError
from sidecar.ingest.decode import dead_letter
from tests.support.decoding import (
    RECEIVED,
    TOPIC,
    decode,
)


# ------------------------------------------------------------------------------------ dead_letter
@pytest.mark.parametrize(("size", "max_bytes"), [(10, 100), (100, 100), (101, 100), (5000, 16),
                                                 (10, 0), (0, 10)])
def test_dead_letter_caps_bytes(size: int, max_bytes: int) -> None:
    """dead_letter keeps at most max_bytes of the message and records the original size."""
    data = bytes(i % 251 for i in range(size))
    row = dead_letter("kairo/x", data, "bad", received_at=RECEIVED, max_bytes=max_bytes)
    assert isinstance(row, DeadLetterRow)
    assert row.payload == data[:max_bytes]
    assert len(row.payload) == min(size, max_bytes)
    assert row.payload_size == size
    assert (row.topic, row.reason, row.received_at) == ("kairo/x", "bad", RECEIVED)


def test_dead_letter_copies_memoryview() -> None:
    """dead_letter stores bytes even when given a memoryview."""
    view = memoryview(b"abcdef")
    row = dead_letter("t", view, "r", received_at=1, max_bytes=3)  # type: ignore[arg-type]
    assert type(row.payload) is bytes
    assert row.payload == b"abc"
    assert row.payload_size == 6


def test_dead_letter_truncates_reason() -> None:
    """dead_letter keeps at most 1000 characters of the reason."""
    row = dead_letter("t", b"x", "r" * 5000, received_at=1, max_bytes=10)
    assert row.reason == "r" * 1000


def test_dead_letter_of_rejected_message() -> None:
    """A PayloadError reason and the raw bytes make a dead-letter row."""
    data = b'{"id": 5}'
    with pytest.raises(PayloadError) as info:
        decode(data)
    row = dead_letter(TOPIC, data, info.value.reason, received_at=RECEIVED, max_bytes=4)
    assert row == DeadLetterRow(TOPIC, b'{"id', len(data), info.value.reason, RECEIVED)
