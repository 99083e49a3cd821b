"""Seeded malformed and hostile requests for every ``kairo-sidecar/request/<op>``, a requester
that sends them over MQTT 5 and collects the answers, and the flood scenario the CI test and
the soak share.

``requests(seed, n)`` gives ``(op, body, content type)`` triples: bad JSON and MessagePack,
unknown fields, every field with wrong types, huge and negative limits, pathological globs,
topic filters and ``where`` paths, numbers beyond 64 bits and doubles, deep nesting, invalid
UTF-8, unknown operations. The contract: each gets exactly one error answer (or an ``ok``
answer / a replay stream when it happens to be valid), never ``internal``, never silence.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import wait_until

OPS = ["query", "get", "replay", "replay/cancel", "stats"]
CODES = {"bad_request", "not_found", "busy", "too_large", "unknown_op",
         "search_disabled", "search_unavailable"}

Request = tuple[str, bytes, str | None]  # (op, body, MQTT 5 content type)


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def _mp(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def _weird(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, 0, -1, 2**63, 2**64, -(2**63) - 1, 10**30, 1e300, -1e300, 0.5, "",
        "x" * rng.choice([1, 1024, 1025, 5000]), "\u0000", "\U0001f600", [], [1, "a"], {},
        {"a": {"b": [1]}}, [[[[[]]]]], "*" * 50, "2024-01-01T00:00:00Z", "yesterday",
    ])


def _glob(rng: random.Random) -> str:
    return rng.choice([
        "*" * rng.randint(1, 1024), "*a" * rng.randint(1, 500) + "b", "?" * rng.randint(1, 1024),
        "kairo.[a-z]*", "kairo.*.*.*.*.*.*.*.*", "\\*", "*\u00e9*\U0001f600*", "**?**?**",
        "a" * 1024, "a" * 1025,
    ])


def _topic_filter(rng: random.Random) -> str:
    return rng.choice([
        "+/" * rng.randint(1, 2000) + "#", "#/a", "a/#/b", "a+/b", "", "\u0000", "kairo//#",
        "/" * rng.randint(1, 100), "k" * 65536, "+", "#", "$SYS/#", "kairo/\U0001f600/+",
    ])


def _where(rng: random.Random) -> Any:
    key = rng.choice([
        "payload" + ".a" * rng.randint(1, 300), "payload[999999]", "payload[1234567]", "payload",
        "metadata.", "payload..a", "payload.a b", "other.a", "payload.\u00e9", "payload.a[0][0][0]",
        "metadata.timestamp", "payload.$", "payload.a'--",
    ])
    value = rng.choice([1, 2**63, -(2**63) - 1, 2**64, 1e308, "s", None, True, [1], {"a": 1}])
    if rng.random() < 0.1:
        return {f"payload.k{i}": i for i in range(rng.choice([16, 17, 100]))}
    return {key: value}


def _valid_body(op: str, rng: random.Random) -> dict[str, Any]:
    if op == "get":
        return {"id": rng.choice(["h-000001", "nope", "x" * 256])}
    if op == "replay/cancel":
        return {"stream": rng.choice(["0" * 32, "nope", "x" * 64])}
    if op == "stats":
        return {}
    body: dict[str, Any] = {rng.choice(["type", "source", "correlation_id"]): "kairo.hostile.x"}
    if op == "replay":
        body.update(batch=rng.choice([1, 100, 1000]))
    else:
        body.update(limit=rng.choice([1, 100, 1000]))
    return body


_FIELDS = {
    "query": ["type", "source", "topic", "since", "until", "correlation_id", "causation_id",
              "trace_id", "after", "where", "limit", "order", "transaction", "reply_to"],
    "replay": ["type", "source", "topic", "since", "until", "correlation_id", "after", "where",
               "batch", "rate", "pace", "speed", "live", "max_duration", "transaction"],
    "get": ["id", "transaction"],
    "replay/cancel": ["stream", "transaction"],
    "stats": ["transaction"],
}


def _hostile_field(name: str, rng: random.Random) -> Any:
    if name == "type" and rng.random() < 0.6:
        return _glob(rng) if rng.random() < 0.5 else [_glob(rng) for _ in range(rng.choice([1, 100, 101]))]
    if name == "topic" and rng.random() < 0.7:
        return _topic_filter(rng)
    if name == "where" and rng.random() < 0.8:
        return _where(rng)
    if name in ("limit", "batch") and rng.random() < 0.7:
        return rng.choice([0, -1, 1001, 100_000, 2**31, 2**63, 2**64, 10**30, 1.5, "10"])
    if name in ("rate", "speed", "max_duration") and rng.random() < 0.7:
        return rng.choice([0, -1, 1e-300, 1e300, 10**30, 3600.1, 1e-9])
    if name == "after" and rng.random() < 0.7:
        return rng.choice([-1, 2**63 - 1, 2**63, 2**64, 10**30, "1"])
    if name == "transaction" and rng.random() < 0.5:
        return rng.choice(["t" * 60_000, [[[[1]]]] * 100, {"deep": [[[[[[[[[[1]]]]]]]]]]}, 2**64])
    return _weird(rng)


def requests(seed: int, n: int) -> list[Request]:
    """``n`` seeded hostile requests over every operation (and some that do not exist)."""
    rng = random.Random(seed)
    out: list[Request] = []
    for _ in range(n):
        op = rng.choice(OPS) if rng.random() < 0.93 else rng.choice(
            ["", "x", "query/extra", "replay/cancel/x", "../query", "\u00e9t\u00e9", "q" * 5000,
             "QUERY", "replay/", "stats/"])
        base = _valid_body(op, rng) if op in _FIELDS else {}
        kind = rng.randrange(10)
        content_type = None
        if kind == 0:  # bad JSON / bytes
            body = rng.choice([b"{", b'{"limit":}', b'{"a":1,}', b"NaN", b"[1,2]", b'"str"', b"\xff\xfe",
                               b'{"type":"\xff"}', b'{"type":"\\ud800"}', b"{}" * 10,
                               _j(base)[: rng.randrange(1, max(2, len(_j(base))))], rng.randbytes(50)])
        elif kind == 1:  # unknown fields
            body = _j({**base, rng.choice(["limt", "bogus", "", "\u0000", "x" * 300]): 1})
        elif kind == 2:  # MessagePack, sometimes broken or with odd keys
            payload = {**base, "limit": 1} if op == "query" else base
            body = rng.choice([_mp(payload), _mp(payload)[:-1] or b"\x81", b"\x81\x01\x02",
                               b"\x81\xc4\x01a\x01", b"\x81\xa4type\xc7\x01\x05a", b"\xdf\xff\xff\xff\xff"])
            content_type = rng.choice([None, "application/msgpack"])
        elif kind == 3:  # deep nesting
            depth = rng.choice([100, 1000, 10_000])
            body = b'{"transaction":' + b"[" * depth + b"]" * depth + b"}"
        elif kind == 4:  # just under and over max_request_bytes
            body = _j({**base, "transaction": "p" * rng.choice([60_000, 65_400, 70_000])})
        elif kind == 5:  # a content type that does not match
            body = _j(base)
            content_type = rng.choice(["application/msgpack", "text/plain", "application/json; x"])
        else:  # wrong or hostile values in known fields
            body_obj = dict(base)
            names = _FIELDS.get(op, ["transaction"])
            for name in rng.sample(names, k=rng.randint(1, min(3, len(names)))):
                body_obj[name] = _hostile_field(name, rng)
            try:
                body = _j(body_obj) if rng.random() < 0.85 else _mp(body_obj)
            except OverflowError:  # MessagePack has no integers beyond 64 bits
                body = _j(body_obj)
        out.append((op, body, content_type))
    return out


# ---------------------------------------------------------------------------- search
SEARCH_QUERIES = [
    '"', '""', '"""', '" "', '"a" "b', 'a"b', "'", "''", "NEAR(a b)", "NEAR(a b, 2)", "NEAR(",
    "NEAR", "a NEAR b", "col:x", "type:", ":x", "x:", "type:type:x", "{type source}: x",
    "{type", "- x", "-x", "x -y", "^x", "x^", "+x", "a + b", "*", "**", "***", "a*b*", "*a",
    "a**", "AND", "OR", "NOT", "AND OR NOT", "a AND", "OR a", "a OR OR b", "a NOT", "NOT",
    "(", ")", "()", "(((a)))", ")a(", "(" * 200 + "a", "a" + ")" * 200, "rank:1", "rowid:1",
    "event_search:x", "body:x", "payload:", "\\", "\\\\\"", "';DROP TABLE events;--",
    "x\x00y", "\x00", " \t\n ", "\u200b", "\u202ex", "\U0001f600", "é" * 300, "日本語 テスト",
    "w " * 64, "w " * 65, "x" * 1000, "x" * 1001, "a" * 5000, "a/b\\c", "a.b.c", "1e999",
    "%", "_", "?", "[a-z]", "$.x", "a:b:c", "source:(a)", 'payload:"x"*', '"x"**',
]


def search_requests(seed: int, n: int) -> list[Request]:
    """``n`` seeded ``search`` requests: hostile query strings, cursors, marks and filters."""
    rng = random.Random(seed)
    out: list[Request] = []
    for _ in range(n):
        body: dict[str, Any] = {"query": rng.choice(SEARCH_QUERIES) if rng.random() < 0.8
                                else " ".join(rng.sample(SEARCH_QUERIES, 3))}
        if rng.random() < 0.3:
            body["after"] = rng.choice([-1, 0, 5, 2**63, "x:y", "nan:1", "inf:5", "-inf:5",
                                        "1e999:3", ":", "1:", "1.5:-2", "a" * 64, "a" * 65, ""])
        if rng.random() < 0.3:
            body["order"] = rng.choice(["rank", "desc", "asc", "RANK", "", None, 1])
        if rng.random() < 0.2:
            body["highlight"] = rng.choice([["<b>", "</b>"], ["", ""], ["x" * 33, "y"], ["a"],
                                            ["\x00", "\x00"], [1, 2], "ab"])
        if rng.random() < 0.3:
            name = rng.choice(["type", "source", "since", "where", "limit", "correlation_id"])
            body[name] = _hostile_field(name, rng)
        try:
            raw = _j(body) if rng.random() < 0.85 else _mp(body)
        except OverflowError:
            raw = _j(body)
        out.append(("search", raw, None))
    return out


# ---------------------------------------------------------------------------- requester
@dataclass
class Answers:
    """Answers per response topic, in arrival order."""

    by_topic: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, body: Any) -> None:
        with self.lock:
            self.by_topic.setdefault(topic, []).append(body)

    def first(self, topic: str) -> Any:
        with self.lock:
            got = self.by_topic.get(topic)
            return got[0] if got else None

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for t in self.by_topic if t.startswith(prefix))


def decode_answer(raw: bytes | bytearray) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return msgspec.msgpack.decode(raw)


class Requester:
    """A paho MQTT 5 client that sends requests with a Response Topic and records answers."""

    def __init__(self, host: str, port: int, *, listen: str) -> None:
        self.answers = Answers()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(listen, 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("requester did not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.answers.add(msg.topic, decode_answer(msg.payload))

    def send(self, op: str, body: bytes, *, response_topic: str,
             content_type: str | None = None) -> paho.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        props.CorrelationData = response_topic.encode()
        if content_type:
            props.ContentType = content_type
        return self.client.publish(f"kairo-sidecar/request/{op}", body, qos=1, properties=props)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def check_answer(op: str, body: Any) -> str | None:
    """What is wrong with the first answer to a hostile request (``None``: acceptable)."""
    if not isinstance(body, dict) or body.get("status") not in ("ok", "error"):
        return f"not an answer: {body!r:.200}"
    if body["status"] == "error":
        detail = body.get("error") or {}
        if detail.get("code") not in CODES:
            return f"error code {detail.get('code')!r}: {detail.get('message')!r:.300}"
        if not detail.get("message"):
            return "error without a message"
    return None


@dataclass
class FloodResult:
    requests: int = 0
    answered: int = 0
    problems: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    busy: int = 0


def flood(requester: Requester, batch: list[Request], *, prefix: str, timeout: float,
          alive: Callable[[], object] = lambda: True, wave: int | None = None) -> FloodResult:
    """Send the requests (each to ``<prefix>/<n>``) all at once, or ``wave`` at a time (each
    wave answered before the next: fewer ``busy``, so the bodies themselves get handled);
    wait for a first answer to every one."""
    size = wave or len(batch)
    for start in range(0, len(batch), size):
        for n in range(start, min(start + size, len(batch))):
            op, body, content_type = batch[n]
            requester.send(op, body, response_topic=f"{prefix}/{n}", content_type=content_type)
        sent = min(start + size, len(batch))
        wait_until(lambda sent=sent: alive() and requester.answers.count(prefix + "/") >= sent,
                   timeout=timeout, interval=0.02,
                   message=f"a first answer to each of {sent} requests")
    result = FloodResult(requests=len(batch))
    for n, (op, body, _) in enumerate(batch):
        first = requester.answers.first(f"{prefix}/{n}")
        if first is None:
            result.problems.append(f"{op} {body[:100]!r}: no answer")
            continue
        result.answered += 1
        code = first.get("error", {}).get("code") if isinstance(first, dict) else None
        key = str(code or (first.get("status") if isinstance(first, dict) else "?"))
        result.codes[key] = result.codes.get(key, 0) + 1
        problem = check_answer(op, first)
        if problem:
            result.problems.append(f"{op} {body[:100]!r}: {problem}")
    return result
