"""The baselines, each a separate process like the daemon: a receive-only paho subscriber and the
naive "one INSERT + commit per message" script.

    python -m bench.subscribers MODE --port P --client-id ID [--count N] [--out FILE] ...

MODE:
  prepare  create the persistent session (clean start off, session expiry, kairo/# at QoS 1)
           and disconnect: the broker queues for it from then on
  receive  count and ack (paho acks QoS 1 after on_message returns), MQTT 5
  receive311  the same over MQTT 3.1.1: no properties to parse, the fastest plain paho
           subscriber (the receive limit of one Python MQTT client; the throughput baseline)
  naive    on_message -> json.loads -> one INSERT + commit per message (Python's sqlite3 with
           its defaults, the daemon's table): what most people write first
  typical  the naive script as people write it today, into a typical table of their own
           (``TYPICAL_SCHEMA``: ``id TEXT PRIMARY KEY``, indexes on correlation and trace ids),
           WAL, ``synchronous = NORMAL``, one INSERT + commit per message: the wear baseline
  clean    connect with clean start and session expiry 0: the broker forgets the session

Every mode but ``receive311`` uses MQTT 5 with the daemon's Receive Maximum
(``--receive-max``, the daemon's ``[writer] queue_size``), so the broker gives each subscriber
the same window; a 3.1.1 client gets the broker's ``max_inflight_messages`` (the bench's
broker sets it to the same 5000). ``--out`` gets a
JSON summary: when it connected, first and last message (``time.monotonic_ns``, comparable
across processes), the count, and with ``--record`` each message's id prefix and receive time.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TOPIC = "kairo/#"

# The table a typical "store every MQTT event in SQLite" script creates (the wear baseline).
TYPICAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, topic TEXT NOT NULL, type TEXT NOT NULL,
  source TEXT, payload TEXT, metadata TEXT, created_at INTEGER, received_at INTEGER,
  correlation_id TEXT, causation_id TEXT, trace_id TEXT);
CREATE INDEX IF NOT EXISTS events_correlation_id ON events (correlation_id);
CREATE INDEX IF NOT EXISTS events_trace_id ON events (trace_id);
"""
TYPICAL_INSERT = ("INSERT OR IGNORE INTO events (id, topic, type, source, payload, metadata, "
                  "created_at, received_at, correlation_id, causation_id, trace_id) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?)")


def open_typical(path: str | Path) -> sqlite3.Connection:
    """The typical script's connection: its table, WAL, ``synchronous = NORMAL``."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    con.executescript(TYPICAL_SCHEMA)
    return con


def typical_row(topic: str, payload: bytes | bytearray, now: int) -> tuple[Any, ...]:
    """``json.loads`` and the columns of ``TYPICAL_SCHEMA``, as such a script would."""
    event = json.loads(payload)
    meta = event.get("metadata", {})
    return (event["id"], topic, event["type"], event["source"], json.dumps(event["payload"]),
            json.dumps(meta), meta.get("timestamp", now), now, meta.get("correlationId"),
            meta.get("causationId"), meta.get("traceId"))


def _client(client_id: str, *, receive_max: int, v311: bool = False,
            clean: bool = False) -> paho.Client:
    if v311:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean, protocol=MQTTProtocolVersion.MQTTv311)
    else:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(receive_max)
    return client


def _connect(client: paho.Client, port: int, *, clean: bool, receive_max: int) -> None:
    if client.protocol == MQTTProtocolVersion.MQTTv311:  # the session lives as long as the broker
        client.connect("127.0.0.1", port, keepalive=60)
        return
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean else 86400
    props.ReceiveMaximum = receive_max
    client.connect("127.0.0.1", port, keepalive=60, clean_start=clean, properties=props)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    client = _client(args.client_id, receive_max=args.receive_max, v311=args.v311)
    done: list[int] = []
    client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
    client.on_subscribe = lambda *_: done.append(1)
    _connect(client, args.port, clean=False, receive_max=args.receive_max)
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    return {"subscribed": bool(done)}


def clean(args: argparse.Namespace) -> dict[str, Any]:
    client = _client(args.client_id, receive_max=args.receive_max, v311=args.v311, clean=True)
    _connect(client, args.port, clean=True, receive_max=args.receive_max)
    client.loop(1.0)
    client.disconnect()
    return {}


def consume(args: argparse.Namespace) -> dict[str, Any]:
    """``receive``, ``receive311``, ``naive`` and ``typical``: run until ``--count`` messages
    arrived (or ``--timeout``)."""
    state: dict[str, Any] = {"count": 0, "first": None, "last": None, "connected": None,
                             "t95": None}
    mark95 = max(1, int(args.count * 0.95))
    ids: list[str] = []
    times: list[int] = []
    record = args.record
    count_target = args.count
    con: sqlite3.Connection | None = None
    if args.mode == "naive":
        con = sqlite3.connect(args.db)  # Python's defaults: rollback journal, synchronous FULL
    typical = open_typical(args.db) if args.mode == "typical" else None
    client = _client(args.client_id, receive_max=args.receive_max,
                     v311=args.mode == "receive311")

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        state["connected"] = time.monotonic_ns()
        if not flags.session_present:
            c.subscribe(TOPIC, qos=1)

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic_ns()
        if con is not None:
            _naive_insert(con, msg.topic, msg.payload)
            now = time.monotonic_ns()
        elif typical is not None:
            typical.execute(TYPICAL_INSERT, typical_row(msg.topic, msg.payload,
                                                        int(time.time() * 1000)))
            typical.commit()
            now = time.monotonic_ns()
        n = state["count"] = state["count"] + 1
        if n == 1:
            state["first"] = now
        state["last"] = now
        if n == mark95:
            state["t95"] = now
        if record:
            ids.append(bytes(msg.payload[7:43]).decode())
            times.append(now)
        if n >= count_target:
            c.disconnect()

    client.on_connect = on_connect
    client.on_message = on_message
    _connect(client, args.port, clean=False, receive_max=args.receive_max)
    deadline = time.monotonic() + args.timeout
    while state["count"] < count_target and time.monotonic() < deadline:
        client.loop(0.05)
    if client.is_connected():
        client.disconnect()
    for connection in (con, typical):
        if connection is not None:
            connection.close()  # the last connection to close checkpoints the WAL
    out: dict[str, Any] = {k: state[k] for k in ("count", "first", "last", "connected", "t95")}
    if record:
        out["ids"], out["times"] = ids, times
    return out


def _naive_insert(con: sqlite3.Connection, topic: str, payload: bytes | bytearray) -> None:
    event = json.loads(payload)
    meta = event.get("metadata", {})
    now = int(time.time() * 1000)
    con.execute(
        "INSERT INTO events (id, topic, type, source, payload, metadata, created_at, received_at,"
        " correlation_id, causation_id, trace_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (event["id"], topic, event["type"], event["source"], json.dumps(event["payload"]),
         json.dumps(meta), meta.get("timestamp", now), now, meta.get("correlationId"),
         meta.get("causationId"), meta.get("traceId")))
    con.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("prepare", "receive", "receive311", "naive", "typical",
                                         "clean"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--receive-max", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--db", help="naive: the (migrated) database file; typical: its file")
    parser.add_argument("--record", action="store_true", help="keep each message's receive time")
    parser.add_argument("--v311", action="store_true",
                        help="prepare/clean: the session of a receive311 subscriber")
    parser.add_argument("--out", help="write the JSON summary here (default: stdout)")
    args = parser.parse_args(argv)
    run = {"prepare": prepare, "clean": clean}.get(args.mode, consume)
    result = run(args)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
