"""Helpers shared by the decode tests (tests/unit/ingest/test_decode_*.py, tests/unit/core/
test_events.py): build payloads in JSON and MessagePack, decode, expect a rejection."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from sidecar.core.events import EventRow
from sidecar.errors import PayloadError
from sidecar.ingest.decode import decode_message

TOPIC = "kairo/user/message"
RECEIVED = 1_700_000_000_000
MAX = 262_144
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(dt: datetime) -> int:
    """Exact epoch milliseconds of an aware datetime (integer arithmetic, no floats)."""
    return (dt - EPOCH) // timedelta(milliseconds=1)


def decode(data: bytes, topic: str = TOPIC, **kwargs: Any) -> EventRow:
    kwargs.setdefault("received_at", RECEIVED)
    kwargs.setdefault("max_payload_bytes", MAX)
    return decode_message(topic, data, **kwargs)


def reject(data: bytes, **kwargs: Any) -> str:
    """Decode ``data``, expect a PayloadError, return its reason."""
    with pytest.raises(PayloadError) as info:
        decode(data, **kwargs)
    assert info.value.reason
    assert str(info.value) == info.value.reason
    return info.value.reason


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def to_msgpack(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


ENCODINGS: dict[str, Callable[[Any], bytes]] = {"json": to_json, "msgpack": to_msgpack}
encodings = pytest.mark.parametrize("encode", list(ENCODINGS.values()), ids=list(ENCODINGS))

ENVELOPE: dict[str, Any] = {
    "id": "evt-1",
    "type": "user.message.sent",
    "source": "svc/chat",
    "payload": {"text": "hi", "n": [1, 2, {"deep": None}], "ok": True},
    "metadata": {
        "correlationId": "corr-1",
        "causationId": "cause-1",
        "traceId": "trace-1",
        "timestamp": 1_700_000_000_123,
        "unknownKey": {"nested": [1, "x"]},
    },
}

CLOUDEVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "ce-1",
    "source": "/svc/orders",
    "type": "com.example.order.created",
    "time": "2024-01-02T03:04:05.678Z",
    "subject": "order/42",
    "datacontenttype": "application/json",
    "correlationid": "corr-ce",
    "causationid": "cause-ce",
    "traceparent": TRACEPARENT,
    "myextension": "kept",
    "data": {"order": 42, "items": [1, 2]},
}

BINARY_PROPS = [("specversion", "1.0"), ("id", "bin-1"), ("type", "com.example.bin"),
                ("source", "/svc/bin"), ("correlationid", "corr-b"), ("causationid", "cause-b"),
                ("traceparent", TRACEPARENT), ("subject", "s")]
