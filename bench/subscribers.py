"""The baselines, each a separate process like the daemon: a receive-only paho subscriber and the
naive "one INSERT + commit per message" script.

    python -m bench.subscribers MODE --port P --client-id ID [--count N] [--out FILE] ...

MODE:
  prepare  create the persistent session (clean start off, session expiry, kairo/# at QoS 1)
           and disconnect: the broker queues for it from then on
  receive  count and ack (paho acks QoS 1 after on_message returns): the receive limit of one
           Python MQTT client
  naive    on_message -> json.loads -> one INSERT + commit per message (Python's sqlite3 with
           its defaults, the daemon's table): what most people write first
  clean    connect with clean start and session expiry 0: the broker forgets the session

Every mode uses MQTT 5 with the daemon's Receive Maximum (``--receive-max``, the daemon's
``[writer] queue_size``), so the broker gives each subscriber the same window. ``--out`` gets a
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


def _client(client_id: str, *, receive_max: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(receive_max)
    return client


def _connect(client: paho.Client, port: int, *, clean: bool, receive_max: int) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean else 86400
    props.ReceiveMaximum = receive_max
    client.connect("127.0.0.1", port, keepalive=60, clean_start=clean, properties=props)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    client = _client(args.client_id, receive_max=args.receive_max)
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
    client = _client(args.client_id, receive_max=args.receive_max)
    _connect(client, args.port, clean=True, receive_max=args.receive_max)
    client.loop(1.0)
    client.disconnect()
    return {}


def consume(args: argparse.Namespace) -> dict[str, Any]:
    """``receive`` and ``naive``: run until ``--count`` messages arrived (or ``--timeout``)."""
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
    client = _client(args.client_id, receive_max=args.receive_max)

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        state["connected"] = time.monotonic_ns()
        if not flags.session_present:
            c.subscribe(TOPIC, qos=1)

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic_ns()
        if con is not None:
            _naive_insert(con, msg.topic, msg.payload)
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
    if con is not None:
        con.close()
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
    parser.add_argument("mode", choices=("prepare", "receive", "naive", "clean"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--receive-max", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--db", help="naive: the (migrated) database file")
    parser.add_argument("--record", action="store_true", help="keep each message's receive time")
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
