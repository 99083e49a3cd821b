"""Seeded, reproducible bad input for the daemon, interleaved with valid events.

``corpus(seed=..., malformed=..., valid=...)`` returns ``Case``s, each on its own topic
(``kairo/fuzz/<kind>/<n>``) so the test can find what became of every single message, and each
with its expected fate: stored as an event, dead-lettered (with the start of the expected
reason when it is known), or nothing new (an exact copy of a stored event).

Malformed kinds are invalid by construction: random bytes, truncated JSON and MessagePack,
deep nesting, payloads over ``max_payload_bytes``, over-long fields, wrong types, invalid
UTF-8, numbers out of range, non-objects, trailing garbage, raw control characters, lone
surrogates, broken CloudEvents, and a stored id with a different body (a conflict). Mutations
of valid events (flipped, cut, inserted bytes) have no fate by construction: the library's own
``decode_message`` in the test process is the oracle, and the daemon must agree with it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from sidecar.core.events import EventRow
from sidecar.errors import PayloadError
from sidecar.ingest.decode import decode_message
from tests.support.stores import target_rows

EVENT, DEAD, NOTHING = "event", "dead_letter", "nothing"
MSGPACK_MAP_MARKERS = {*range(0x80, 0x90), 0xDE, 0xDF}
NOT_AN_OBJECT = "not a JSON object or a MessagePack map"


@dataclass(frozen=True)
class Case:
    kind: str
    topic: str
    payload: bytes
    expect: str  # EVENT, DEAD or NOTHING
    event_id: str | None = None  # the stored id, for an EVENT that carries one
    reason: str | None = None  # how the dead letter's reason starts, when known
    oracle: EventRow | None = None  # the row the library makes of it (EVENT cases)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _msgpack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


_TEXTS = ["plain", "caf\u00e9", "\u65e5\u672c\u8a9e", "\U0001f600\U0001f680",
          "\u05e2\u05d1\u05e8\u05d9\u05ea", "e\u0301", "\u200b\ufeff", "tab\there",
          'quote"back\\slash', "nul\u0000inside", "\uffff", "\U0010fffd", "line\nbreak", ""]


class _Gen:
    def __init__(self, seed: int, max_payload_bytes: int, prefix: str) -> None:
        self.rng = random.Random(seed)
        self.max = max_payload_bytes
        self.prefix = prefix

    # ------------------------------------------------------------------ valid events
    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.randrange(8 if depth < 3 else 5)
        if pick == 0:
            return rng.choice(_TEXTS) + str(rng.randrange(1000))
        if pick == 1:
            return rng.randint(-2**53, 2**53)
        if pick == 2:
            return rng.uniform(-1e6, 1e6)
        if pick == 3:
            return rng.choice([True, False, None])
        if pick == 4:
            return rng.choice(["", 0, -0.0, 2**63 - 1, -2**63])
        if pick in (5, 6):
            return {f"{rng.choice(_TEXTS)}{k}": self.value(depth + 1) for k in range(rng.randrange(4))}
        return [self.value(depth + 1) for _ in range(rng.randrange(4))]

    def event(self, n: int) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {
            "id": f"{self.prefix}-ok-{n:07d}",
            "type": f"kairo.fuzz.{rng.choice(['a', 'b', 'c'])}",
            "source": rng.choice(["dev-1", "dev-\u00e9", "\U0001f4e1"]),
            "payload": {"n": n, "v": self.value()},
            "metadata": {"timestamp": 1_700_000_000_000 + n},
        }
        if rng.random() < 0.3:
            body["metadata"]["correlationId"] = f"corr-{n % 13}"
        return body

    def valid(self, n: int) -> tuple[str, bytes, dict[str, Any]]:
        """A valid message of some kind, and the event it carries."""
        body = self.event(n)
        form = self.rng.randrange(6)
        if form == 0:
            return "valid-msgpack", _msgpack(body), body
        if form == 1:
            ce = {"specversion": "1.0", "id": body["id"], "type": body["type"],
                  "source": body["source"], "data": body["payload"],
                  "time": "2024-01-02T03:04:05.678Z"}
            return "valid-cloudevent", _json(ce), body
        if form == 2:  # numbers JSON allows but no double/int64 holds: kept verbatim
            extra = b'"huge":1e999,"big":123456789012345678901234567890,'
            text = _json(body).replace(b'"payload":{', b'"payload":{' + extra, 1)
            return "valid-big-numbers", text, body
        if form == 3:
            return "valid-spaced", json.dumps(body, indent=2, ensure_ascii=True).encode(), body
        return "valid", _json(body), body

    # ------------------------------------------------------------------ malformed
    def malformed_kinds(self) -> dict[str, Callable[[int], tuple[bytes, str | None]]]:
        rng = self.rng
        limit = self.max

        def base(n: int) -> dict[str, Any]:
            return {**self.event(n), "id": f"{self.prefix}-bad-{n:07d}"}

        def random_bytes(n: int) -> tuple[bytes, str | None]:
            first = rng.choice([b for b in range(256) if b not in MSGPACK_MAP_MARKERS
                                and b not in b"{ \t\r\n"])
            return bytes([first]) + rng.randbytes(rng.randrange(0, 300)), NOT_AN_OBJECT

        def truncated_json(n: int) -> tuple[bytes, str | None]:
            data = _json(base(n))
            return data[: rng.randrange(1, len(data) - 1)], "malformed JSON"

        def truncated_msgpack(n: int) -> tuple[bytes, str | None]:
            data = _msgpack(base(n))
            return data[: rng.randrange(1, len(data))], "malformed MessagePack"

        def deep(n: int) -> tuple[bytes, str | None]:
            depth = rng.randrange(1000, min(3500, limit // 2 - 40))
            where = rng.randrange(3)
            if where == 0:
                return b'{"id":"d%d","payload":' % n + b"[" * depth + b"]" * depth + b"}", None
            if where == 1:
                return (b'{"id":"d%d","metadata":{"a":' % n + b"[" * depth + b"]" * depth + b"}}",
                        None)
            return b"\x82\xa2id\xa1d\xa7payload" + b"\x91" * depth + b"\x01", None

        def oversize(n: int) -> tuple[bytes, str | None]:
            body = base(n)
            body["payload"] = {"blob": "x" * (limit + rng.randrange(1, limit // 2))}
            return _json(body), "payload too large"

        def long_field(n: int) -> tuple[bytes, str | None]:
            field, size = rng.choice([("type", 1025), ("source", 1025), ("id", 257)])
            return _json({**base(n), field: "y" * (size + rng.randrange(50))}), "invalid event"

        def wrong_type(n: int) -> tuple[bytes, str | None]:
            body = base(n)
            choice = rng.randrange(9)
            if choice == 0:
                body["id"] = rng.choice([n, 1.5, True, None, ["x"], {"x": 1}])
                if body["id"] is None:
                    body["id"] = []
            elif choice == 1:
                body["type"] = rng.choice([n, ["a"], {"a": 1}, False])
            elif choice == 2:
                body["source"] = rng.choice([n, ["a"], {"a": 1}, True])
            elif choice == 3:
                body["metadata"] = rng.choice(["text", [1, 2], n, True])
            elif choice == 4:
                body["metadata"] = {"timestamp": rng.choice([True, {"t": 1}, [1], "yesterday"])}
            elif choice == 5:
                body["metadata"] = {"correlationId": rng.choice([n, ["c"], {"c": 1}, 1.5])}
            elif choice == 6:
                body["metadata"] = {"causationId": rng.choice([n, ["c"], False])}
            elif choice == 7:
                body["metadata"] = {"traceId": rng.choice([n, ["t"], {"t": 0}])}
            else:
                return _msgpack({**body, "id": rng.randbytes(4)}), None
            return _json(body), None

        def invalid_utf8(n: int) -> tuple[bytes, str | None]:
            bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"])
            where = rng.randrange(5)
            if where == 0:
                return b'{"id":"u%d","source":"a' % n + bad + b'","payload":{}}', None
            if where == 1:
                return b'{"id":"u%d","payload":{"s":"' % n + bad + b'"}}', None
            if where == 2:
                return b'{"id":"u%d","metadata":{"k":"' % n + bad + b'"}}', None
            if where == 3:
                return b'{"' + bad + b'":1}', None
            return b"\x82\xa2id\xa1u\xa6source\xa1" + bad[:1], None

        def number_range(n: int) -> tuple[bytes, str | None]:
            choice = rng.randrange(5)
            if choice == 0:
                ts: bytes = rng.choice([b"1e999", b"-1e999", b"-1", b"253402300800000",
                                        b"1180591620717411303424", b"-0.5"])
                return b'{"id":"r%d","metadata":{"timestamp":%s}}' % (n, ts), None
            if choice == 1:
                return b'{"id":"r%d","metadata":{"x":1e999}}' % n, None
            if choice == 2:
                return b'{"id":"r%d","metadata":{"timestamp":"10000-01-01T00:00:00Z"}}' % n, None
            if choice == 3:
                return b'{"specversion":"1.0","id":"r%d","data":{"x":-1e400}}' % n, None
            return _msgpack({"id": f"r{n}", "metadata": {"timestamp": rng.choice([-5, 2**63])}}), None

        def not_object(n: int) -> tuple[bytes, str | None]:
            data = rng.choice([_json([n, "array"]), _json(f"string {n}"), str(n).encode(), b"null",
                               b"true", _msgpack([n, 1]), _msgpack(n), b" [1]"])
            return data, NOT_AN_OBJECT

        def trailing(n: int) -> tuple[bytes, str | None]:
            return _json(base(n)) + rng.choice([b" x", b"{}", b"\x00", b",", b"]"]), "malformed JSON"

        def control(n: int) -> tuple[bytes, str | None]:
            ch = bytes([rng.choice([0, 1, 9, 10, 13, 27, 31])])
            return b'{"id":"c%d","source":"a' % n + ch + b'b","payload":1}', "malformed JSON"

        def surrogate(n: int) -> tuple[bytes, str | None]:
            esc = rng.choice([b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\udbff"])
            return b'{"id":"s%d","payload":{"s":"' % n + esc + b'"}}', "malformed JSON"

        def bad_cloudevent(n: int) -> tuple[bytes, str | None]:
            ce: dict[str, Any] = {"specversion": "1.0", "id": f"ce{n}", "source": "s", "type": "t"}
            choice = rng.randrange(4)
            if choice == 0:
                ce["specversion"] = rng.choice([1, None, [], ""])
            elif choice == 1:
                ce["data_base64"] = rng.choice([5, ["x"], {"x": 1}])
            elif choice == 2:
                ce["id"] = rng.choice([5, ["x"], ""])
            else:
                ce["time"] = rng.choice(["tomorrow", 5, "2024-13-45T99:99:99Z"])
            return _json(ce), None

        def empty(n: int) -> tuple[bytes, str | None]:
            return rng.choice([b"", b" ", b"\n\t"]), NOT_AN_OBJECT

        return {"random": random_bytes, "truncated-json": truncated_json,
                "truncated-msgpack": truncated_msgpack, "deep": deep, "oversize": oversize,
                "long-field": long_field, "wrong-type": wrong_type, "invalid-utf8": invalid_utf8,
                "number-range": number_range, "not-object": not_object, "trailing": trailing,
                "control-char": control, "surrogate": surrogate, "bad-cloudevent": bad_cloudevent,
                "empty": empty}

    # ------------------------------------------------------------------ mutations
    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(4)
            if op == 0 and buf:
                pos = rng.randrange(len(buf))
                buf[pos] ^= 1 << rng.randrange(8)
            elif op == 1 and buf:
                del buf[rng.randrange(len(buf)):]
            elif op == 2:
                pos = rng.randrange(len(buf) + 1)
                buf[pos:pos] = rng.randbytes(rng.randint(1, 4))
            elif buf:
                start = rng.randrange(len(buf))
                buf[start:start] = buf[start:start + rng.randint(1, 16)]
        return bytes(buf)


def decode(topic: str, data: bytes, max_payload_bytes: int) -> EventRow | PayloadError:
    try:
        return decode_message(topic, data, received_at=0, max_payload_bytes=max_payload_bytes)
    except PayloadError as exc:
        return exc


def corpus(*, seed: int, malformed: int, valid: int, max_payload_bytes: int,
           prefix: str = "fz", mutations: int | None = None) -> list[Case]:
    """``valid`` events and ``malformed`` bad messages (plus ``mutations``, default a tenth of
    ``malformed``, oracle-judged), shuffled; conflicts and exact copies come after their
    originals."""
    gen = _Gen(seed, max_payload_bytes, prefix)
    rng = gen.rng
    cases: list[Case] = []
    originals: list[tuple[Case, dict[str, Any]]] = []
    for n in range(valid):
        kind, data, body = gen.valid(n)
        topic = f"kairo/fuzz/{kind}/{n}"
        row = decode(topic, data, max_payload_bytes)
        assert isinstance(row, EventRow), (kind, data[:200], row)
        case = Case(kind, topic, data, EVENT, event_id=body["id"], oracle=row)
        cases.append(case)
        originals.append((case, body))
    kinds = gen.malformed_kinds()
    names = sorted(kinds)
    for n in range(malformed):
        kind = names[n % len(names)]
        data, reason = kinds[kind](n)
        topic = f"kairo/fuzz/{kind}/{n}"
        assert isinstance(decode(topic, data, max_payload_bytes), PayloadError), (kind, data[:300])
        cases.append(Case(kind, topic, data, DEAD, reason=reason))
    used_ids = {c.event_id for c in cases if c.event_id}
    for n in range(malformed // 10 if mutations is None else mutations):
        original, _ = rng.choice(originals)
        data = gen.mutate(original.payload)
        topic = f"kairo/fuzz/mutation/{n}"
        row = decode(topic, data, max_payload_bytes)
        if isinstance(row, PayloadError):
            cases.append(Case("mutation", topic, data, DEAD))
        elif row.id is None or row.id not in used_ids:
            if row.id is not None:
                used_ids.add(row.id)
            cases.append(Case("mutation", topic, data, EVENT, event_id=row.id, oracle=row))
        # a mutation that kept a used id is dropped: its fate depends on the body comparison
    rng.shuffle(cases)
    # Conflicts (a stored id, another body) and exact copies go after their original.
    position = {c.topic: i for i, c in enumerate(cases)}
    later: list[tuple[int, Case]] = []
    for n in range(max(1, malformed // 50)):
        original, body = rng.choice(originals)
        if rng.random() < 0.5:
            changed = {**body, "payload": {"n": -1, "changed": n}}
            case = Case("conflict", f"kairo/fuzz/conflict/{n}", _json(changed), DEAD,
                        reason="conflict:")
        else:
            case = Case("copy", f"kairo/fuzz/copy/{n}", original.payload, NOTHING)
        later.append((rng.randrange(position[original.topic] + 1, len(cases) + 1), case))
    for index, case in sorted(later, key=lambda item: item[0], reverse=True):
        cases.insert(index, case)
    return cases


# ---------------------------------------------------------------------------- checking
def verify(db_path: Any, cases: list[Case], *, dead_letter_max_bytes: int) -> list[str]:
    """What differs between the database and the cases' expected fates (empty: all good).

    Every EVENT case is exactly one row on its topic, with its id and the oracle's columns;
    every DEAD case exactly one dead letter on its topic with the raw bytes (capped), the
    original size and a reason (the expected one when known, never an internal error); a
    NOTHING case left no row at all."""
    postgres = isinstance(db_path, str) and not db_path.startswith("sqlite:")
    topic = 'topic COLLATE "C"' if postgres else "topic"  # byte order on either engine
    window = f"WHERE {topic} >= 'kairo/fuzz/' AND {topic} < 'kairo/fuzz0'"
    events: dict[str, list[tuple[Any, ...]]] = {}
    json_text = "payload::text, metadata::text" if postgres else "payload, metadata"
    for r in target_rows(db_path, f"SELECT topic, id, type, source, {json_text}, created_at, "
                         f"correlation_id, causation_id, trace_id FROM events {window}"):
        events.setdefault(r[0], []).append(r)
    dead: dict[str, list[tuple[Any, ...]]] = {}
    for r in target_rows(db_path, "SELECT topic, payload, payload_size, reason FROM dead_letters "
                         f"{window}"):
        dead.setdefault(r[0], []).append(r)
    problems: list[str] = []
    # PostgreSQL holds no U+0000: such an event is a dead letter ("storage refused") each time
    # it comes, so its id stays free: a "conflict" case with it stores its other body, and a
    # copy is refused again, or a conflict with that body. One row each, never an internal error.
    nul_ids = {c.oracle.id for c in cases if postgres and c.expect == EVENT
               and c.oracle is not None and holds_nul(c.oracle)}
    for case in cases:
        got_events = events.pop(case.topic, [])
        got_dead = dead.pop(case.topic, [])
        label = f"{case.topic} ({case.payload[:80]!r})"
        if nul_ids and case.kind in ("copy", "conflict") and _id_of(case) in nul_ids:
            refused = [d for d in got_dead if d[3].startswith(("storage refused the event",
                                                                "conflict:"))]
            if len(got_events) + len(got_dead) != 1 or len(refused) != len(got_dead):
                problems.append(f"{label}: a {case.kind} of an event holding U+0000: got "
                                f"{len(got_events)} events, dead letters {[d[3] for d in got_dead]}")
            continue
        if case.expect == EVENT and postgres and case.oracle is not None \
                and holds_nul(case.oracle):
            # PostgreSQL holds no U+0000: the writer makes such an event a dead letter
            if len(got_dead) != 1 or got_events or \
                    not got_dead[0][3].startswith("storage refused the event"):
                problems.append(f"{label}: holds U+0000, expected one 'storage refused' dead "
                                f"letter, got {[d[3] for d in got_dead]} and {len(got_events)} "
                                "events")
            continue
        if case.expect == EVENT:
            if len(got_events) != 1 or got_dead:
                problems.append(f"{label}: expected one event, got {len(got_events)} events, "
                                f"dead letters {[d[3] for d in got_dead]}")
                continue
            _, id_, type_, source, payload, metadata, created_at, corr, caus, trace = got_events[0]
            row = case.oracle
            assert row is not None
            if case.event_id is not None and id_ != case.event_id:
                problems.append(f"{label}: stored id {id_!r}, expected {case.event_id!r}")
            got = (type_, source, payload, metadata, corr, caus, trace)
            want = (row.type, row.source, row.payload, row.metadata, row.correlation_id,
                    row.causation_id, row.trace_id)
            if postgres:  # JSONB: the same JSON value, not the same text (numbers exact)
                got = (type_, source, _value(payload), _value(metadata), corr, caus, trace)
                want = (row.type, row.source, _value(row.payload), _value(row.metadata),
                        row.correlation_id, row.causation_id, row.trace_id)
            if got != want:
                problems.append(f"{label}: stored {got!r:.300} but the library makes {want!r:.300}")
            if row.created_at and created_at != row.created_at:
                problems.append(f"{label}: created_at {created_at} != {row.created_at}")
        elif case.expect == DEAD:
            if len(got_dead) != 1 or got_events:
                problems.append(f"{label}: expected one dead letter, got {len(got_dead)} and "
                                f"{len(got_events)} events")
                continue
            _, payload, size, reason = got_dead[0]
            if case.kind not in ("conflict",) and (bytes(payload) != case.payload[:dead_letter_max_bytes]
                                                   or size != len(case.payload)):
                problems.append(f"{label}: dead letter bytes/size differ ({size})")
            if not reason or reason.startswith(("internal error", "storage refused")):
                problems.append(f"{label}: reason {reason!r}")
            elif case.reason is not None and not reason.startswith(case.reason):
                problems.append(f"{label}: reason {reason!r}, expected {case.reason!r}...")
        elif got_events or got_dead:
            problems.append(f"{label}: expected nothing new, got {len(got_events)} events and "
                            f"dead letters {[d[3] for d in got_dead]}")
    for topic in list(events)[:5] + list(dead)[:5]:
        problems.append(f"{topic}: a row for a topic nobody published")
    return problems


def holds_nul(row: Any) -> bool:
    """Whether an oracle ``EventRow`` holds U+0000 anywhere (a text column, or a JSON string or
    key of its payload or metadata)."""
    def walk(value: Any) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(walk(k) or walk(v) for k, v in value.items())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    texts = (row.id, row.topic, row.type, row.source, row.correlation_id, row.causation_id,
             row.trace_id)
    return any(walk(t) for t in texts) or walk(json.loads(row.payload)) \
        or walk(json.loads(row.metadata))


def _value(text: str) -> Any:
    """A JSON text as a value that compares as JSONB does: numbers exact (``1e999`` is no
    infinity there), key order and whitespace ignored."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _id_of(case: Case) -> str | None:
    """The event id a case's message carries (None when it decodes to no event)."""
    try:
        return decode_message(case.topic, case.payload, received_at=0,
                              max_payload_bytes=1 << 30).id
    except PayloadError:
        return None
