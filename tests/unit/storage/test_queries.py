"""Filters -> SQL on a real SQLite file and a real PostgreSQL database (queries + reads), request
decoding, MQTT topic rules."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import sidecar.storage
from sidecar.api.protocol import QueryRequest, RequestMessage, bad_filter, decode_request
from sidecar.config import load_config
from sidecar.core import topics
from sidecar.core.events import StoredEvent, event_size
from sidecar.errors import ConfigError, FilterError, RequestError
from sidecar.storage.queries import conditions
from sidecar.storage.reads import Reader, open_reader
from tests.support.stores import Store

ROWS = [
    # id, topic, type, payload, metadata, created_at, correlation_id
    ("a1", "kairo/user/message", "kairo.user.message", {"session_id": "s1", "n": 1, "ok": True},
     {"severity": "high"}, 1_700_000_000_000, "wf-1"),
    ("a2", "kairo/user/login", "kairo.user.login", {"session_id": "s2", "n": "1", "ok": False},
     {}, 1_700_000_001_000, "wf-1"),
    ("a3", "kairo/sys/boot", "kairo.sys.boot", {"session_id": "s1", "n": 2, "gone": None},
     {"severity": "low"}, 1_700_000_002_000, "wf-2"),
    ("a4", "kairo/user/a/b", "kairo.user.deep", {"items": [{"k": "x"}]}, {}, 1_700_000_003_000,
     None),
    ("a5", "site/1/events", "other", {}, {}, 1_700_000_004_000, None),
]


@pytest.fixture(scope="module")
def reader(module_store: Store) -> Iterator[Reader]:
    """ROWS in a store on each engine (the filter tests run on both)."""
    module_store.insert_events([
        {"id": i, "topic": t, "type": ty, "source": "src", "payload": json.dumps(p),
         "metadata": json.dumps(m), "created_at": c, "received_at": c, "correlation_id": corr}
        for i, t, ty, p, m, c, corr in ROWS])
    r = Reader(open_reader(module_store.config))
    yield r
    r.close()


def ids(reader: Reader, limit: int = 100, **filters: Any) -> list[str]:
    request = msgspec.convert(filters, QueryRequest)
    rows = reader.page(conditions(request), limit=limit, order=request.order)
    return [row[1] for row in rows]


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["a1", "a2", "a3", "a4", "a5"]),
    ({"type": "kairo.user.login"}, ["a2"]),
    ({"type": ["kairo.sys.boot", "other"]}, ["a3", "a5"]),
    ({"type": "kairo.user.*"}, ["a1", "a2", "a4"]),
    ({"type": ["other", "kairo.sys.*"]}, ["a3", "a5"]),
    ({"type": "kairo.user.log?n"}, ["a2"]),
    ({"topic": "kairo/user/+"}, ["a1", "a2"]),
    ({"topic": "kairo/#"}, ["a1", "a2", "a3", "a4"]),
    ({"topic": "+/+/events"}, ["a5"]),
    ({"topic": "kairo/user/a/b"}, ["a4"]),
    ({"since": 1_700_000_001_000, "until": "2023-11-14T22:13:23Z"}, ["a2", "a3"]),
    ({"correlation_id": "wf-1"}, ["a1", "a2"]),
    ({"where": {"payload.session_id": "s1"}}, ["a1", "a3"]),
    ({"where": {"payload.n": 1}}, ["a1"]),  # the number 1, not the string "1"
    ({"where": {"payload.n": "1"}}, ["a2"]),
    ({"where": {"payload.ok": False}}, ["a2"]),
    ({"where": {"payload.gone": None}}, ["a3"]),  # null, not a missing key
    ({"where": {"metadata.severity": "high", "payload.session_id": "s1"}}, ["a1"]),
    ({"where": {"payload.items[0].k": "x"}}, ["a4"]),
    ({"after": 3}, ["a4", "a5"]),
    ({"order": "desc", "after": 3}, ["a2", "a1"]),
])
def test_filters_select_the_right_events(reader: Reader, filters: dict[str, Any],
                                         expected: list[str]):
    """Each filter kind (type/glob/list, topic wildcards, time, ids, where, cursor) matches."""
    assert ids(reader, **filters) == expected


@pytest.mark.parametrize(("filters", "field"), [
    ({"type": "kairo.[ab]*"}, "type"),
    ({"type": ["ok", "kairo.[*"]}, "type[1]"),
    ({"topic": "kairo/#/x"}, "topic"),
    ({"topic": "kairo/a+"}, "topic"),
    ({"since": "yesterday"}, "since"),
    ({"until": -5}, "until"),
    ({"since": 2000, "until": 1000}, "until"),
    ({"where": {"payload": 1}}, "where.payload"),
    ({"where": {"body.x": 1}}, "where.body.x"),
    ({"where": {"payload.a b": 1}}, "where.payload.a b"),
])
def test_bad_filters_name_the_field(filters: dict[str, Any], field: str):
    """Bad globs, topic filters, times and where keys raise bad_request naming the field."""
    with pytest.raises(FilterError) as info:
        conditions(msgspec.convert(filters, QueryRequest))
    refusal = bad_filter(info.value)  # what the API answers
    assert (refusal.code, refusal.field, info.value.exit_code) == ("bad_request", field, 2)


@pytest.mark.parametrize(("body", "field"), [
    (b'{"bogus": 1}', "bogus"),
    (b'{"limit": "ten"}', "limit"),
    (b'{"limit": 0}', "limit"),
    (b'{"order": "sideways"}', "order"),
    (b'{"where": {"payload.x": {"nested": 1}}}', "where"),
    (b'{"after": -1}', "after"),
    (b'[1, 2]', None),
    (b'{"limit": ', None),
])
def test_request_decoding_errors_name_the_field(body: bytes, field: str | None):
    """Unknown fields, wrong types, out-of-range values, non-objects and bad JSON are refused."""
    with pytest.raises(RequestError) as info:
        decode_request(RequestMessage("query", body))
    assert info.value.code == "bad_request"
    assert info.value.field == field


def test_empty_and_msgpack_requests_decode():
    """An empty body is {} (defaults); a MessagePack body decodes like JSON."""
    assert decode_request(RequestMessage("query", b"")) == QueryRequest()
    packed = msgspec.msgpack.encode({"limit": 5, "type": "a.*"})
    assert decode_request(RequestMessage("query", packed)) == QueryRequest(limit=5, type="a.*")


def test_topic_matching_rules():
    """+ matches one level, # the rest including the parent, $ topics need a literal first level."""
    assert topics.matches("kairo/#", "kairo")
    assert topics.matches("kairo/+/x", "kairo/a/x")
    assert not topics.matches("kairo/+/x", "kairo/a/b/x")
    assert not topics.matches("#", "$SYS/broker")
    assert topics.overlaps("#", "kairo-sidecar/request/#")
    assert topics.overlaps("+/request/+", "kairo-sidecar/request/#")
    assert not topics.overlaps("kairo/#", "kairo-sidecar/request/#")
    assert not topics.overlaps("kairo-sidecar/state", "kairo-sidecar/request/#")


@pytest.mark.parametrize("topic", ["#", "+/request/#", "kairo-sidecar/response/x"])
def test_config_refuses_event_topics_overlapping_the_api(topic: str):
    """Event topics that could match the API's request/response topics stop the start-up."""
    environ = {"KAIRO_SIDECAR_MQTT__TOPICS": json.dumps(["kairo/#", topic])}
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    assert info.value.key == "mqtt.topics[1]"


def test_config_accepts_overlap_with_another_base_topic():
    """Moving api.base_topic out of the way makes a broad event filter acceptable."""
    environ = {"KAIRO_SIDECAR_MQTT__TOPICS": '["kairo/#", "site/#"]',
               "KAIRO_SIDECAR_API__BASE_TOPIC": "kairo/../nope"}
    with pytest.raises(ConfigError):
        load_config(environ=environ)  # under kairo/#: still refused
    environ["KAIRO_SIDECAR_API__BASE_TOPIC"] = "svc/history"
    assert load_config(environ=environ).api.base_topic == "svc/history"


# ------------------------------------------------------------------------------ reads
def test_reads_return_stored_events(reader: Reader):
    """Pages and get return StoredEvent rows whose fields are named in answer order."""
    event = reader.get("a3")
    assert isinstance(event, StoredEvent)
    assert (event.id, event.type, event.created_at) == ("a3", "kairo.sys.boot", 1_700_000_002_000)
    assert json.loads(event.payload)["session_id"] == "s1"
    page = reader.page(conditions(QueryRequest()), limit=2)
    assert all(isinstance(e, StoredEvent) for e in page)
    assert [e.seq for e in page] == sorted(e.seq for e in page) and page[1].id == "a2"
    assert reader.get("missing") is None


def test_answer_page_holds_what_fits_and_says_where_to_go_on(reader: Reader):
    """answer_page stops before the event that takes the answer past max_bytes (one event always
    goes), cuts at limit, and gives next only when more events may match."""
    cond = conditions(QueryRequest())
    everything = reader.page(cond, limit=100)
    sizes = [event_size(e) for e in everything]

    def walk(limit: int, max_bytes: int) -> list[tuple[list[str], int | None]]:
        pages, after = [], None
        while True:
            found = reader.answer_page(conditions(QueryRequest(after=after)), limit=limit,
                                       max_bytes=max_bytes)
            pages.append(([e.id for e in found.events], found.next))
            if found.next is None:
                return pages
            assert found.next == found.events[-1].seq
            after = found.next

    first_two = sizes[0] + sizes[1]
    assert walk(10, first_two)[0] == (["a1", "a2"], everything[1].seq)
    assert walk(10, first_two - 1)[0] == (["a1"], everything[0].seq)
    assert walk(10, 1) == [([e.id], e.seq if i < 4 else None) for i, e in enumerate(everything)]
    assert walk(4, 10**6) == [(["a1", "a2", "a3", "a4"], everything[3].seq), (["a5"], None)]
    assert walk(5, 10**6) == [(["a1", "a2", "a3", "a4", "a5"], None)]
    assert walk(2, sum(sizes) - sizes[4] + 1) == [(["a1", "a2"], everything[1].seq),
                                                 (["a3", "a4"], everything[3].seq), (["a5"], None)]


def test_storage_imports_nothing_from_the_api():
    """No module of sidecar.storage imports sidecar.api (storage sits below the API)."""
    storage = Path(sidecar.storage.__file__).parent
    for module in storage.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith("sidecar.api")], module.name
