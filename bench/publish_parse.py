"""Per-message cost of reading a PUBLISH on the network thread: paho's own path against the
lean parser (``sidecar.broker.publish``), in-process, one core, no broker.

    python -m bench.publish_parse [--events 20000]

The packets are what Mosquitto sends the daemon for the bench's events: MQTT 5, QoS 1, no
properties. *paho* is what ``_handle_publish`` does before ``on_message`` (``decode_publish``
with its ``Properties`` object, an ``MQTTMessage``) plus the subscriber reading the message's
fields; *lean* is ``parse_publish``; *hand-off* is the subscriber, intake and decode of the
daemon after either (into a plain queue instead of the writer). Best of 3, microseconds per
message.
"""

from __future__ import annotations

import argparse
import queue
import struct
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

from bench.events import make_messages
from sidecar.broker.publish import Publish, parse_publish
from sidecar.broker.subscriber import Subscriber, _as_publish
from sidecar.config import load_config
from sidecar.core.stats import Stats
from sidecar.ingest.intake import Intake
from sidecar.ingest.tasks import KvTask
from sidecar.ingest.writer import Delivery


def _packet_of(topic: bytes, payload: bytes, mid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + payload
    length, size = len(body), bytearray()
    while True:
        byte, length = length & 127, length >> 7
        size.append(byte | (128 if length else 0))
        if not length:
            return bytes([0x32]) + bytes(size) + body


class _Queue:
    """Stands in for the writer: what ``Intake`` needs, a queue put per delivery."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.depth = 0
        self._queue: queue.SimpleQueue[Delivery] = queue.SimpleQueue()

    def submit(self, delivery: Delivery) -> bool:
        self._queue.put(delivery)
        return True

    def submit_kv(self, task: KvTask) -> None:  # no kv/set messages in this bench
        raise NotImplementedError


def _best(n: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    n = parser.parse_args().events
    packets = [_packet_of(m.topic.encode(), m.payload, i % 65535 + 1)
               for i, m in enumerate(make_messages(n))]
    buf = b"".join(packets)
    v5 = MQTTProtocolVersion.MQTTv5

    def paho_path() -> list[Publish]:
        out = []
        for p in packets:
            start = 2 if p[1] < 128 else 3  # after the fixed header (events < 16 KiB)
            r = _packet.decode_publish(p[0], bytearray(p[start:]), v5)
            msg = paho.MQTTMessage(mid=r.mid, topic=r.topic)
            msg.dup, msg.qos, msg.retain = r.dup, r.qos, r.retain
            msg.properties, msg.payload = r.properties, r.payload
            out.append(_as_publish(msg))
        return out

    def lean_path() -> list[Publish]:
        out, pos = [], 0
        while pos < len(buf):
            parsed = parse_publish(buf, pos, True)
            assert parsed is not None
            msg, pos = parsed
            out.append(msg)
        return out

    assert paho_path() == lean_path()
    config = load_config(environ={})
    subscriber = Subscriber(config.mqtt, queue_size=5000, api_base_topic="kairo/api")
    subscriber.attach(on_event=Intake(_Queue(), config.ingest).receive,
                      on_request=lambda msg: None)
    messages = lean_path()

    def hand_off() -> None:
        for msg in messages:
            subscriber._on_publish(msg)

    print(f"{n} PUBLISH packets, {len(buf) / n:.0f} bytes each on average; us per message:")
    print(f"  paho: decode_publish + MQTTMessage   {_best(n, paho_path):6.2f}")
    print(f"  lean: parse_publish                  {_best(n, lean_path):6.2f}")
    print(f"  hand-off: subscriber, intake, decode {_best(n, hand_off):6.2f}")


if __name__ == "__main__":
    main()
