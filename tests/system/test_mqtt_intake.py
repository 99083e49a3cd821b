"""Tests of the subscriber's intake switch and hand-over (no broker needed: messages are handed
in directly, through the real ``Intake``, to a stand-in writer)."""

from __future__ import annotations

import threading

import paho.mqtt.client as paho

from sidecar.broker.subscriber import Subscriber
from sidecar.config import IngestConfig, MQTTConfig
from sidecar.core.stats import Stats
from sidecar.ingest.intake import Intake
from sidecar.ingest.writer import Delivery
from tests.conftest import wait_until


class SlowWriter:
    """Stands in for the writer: submit blocks until released, and records what it got."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.got: list[Delivery] = []
        self.stats = Stats()
        self.depth = 0

    def submit(self, delivery: Delivery) -> bool:
        self.entered.set()
        self.release.wait(10)
        self.got.append(delivery)
        return True


def _message(mid: int) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=b"kairo/test/x")
    msg.payload = b'{"id": "e-%d", "payload": 1}' % mid
    msg.qos = 1
    return msg


def test_stop_intake_waits_for_a_hand_over_in_progress_then_refuses():
    """stop_intake returns only after a message being handed over reached the writer; a message
    arriving after it is not handed over (the broker keeps it)."""
    writer = SlowWriter()
    sub = Subscriber(MQTTConfig(), queue_size=10)
    sub.attach(on_event=Intake(writer, IngestConfig()).receive)
    receiving = threading.Thread(target=sub._on_message, args=(None, None, _message(1)))
    receiving.start()
    assert writer.entered.wait(5)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (sub.stop_intake(), stopped.set()))
    stopper.start()
    assert not stopped.wait(0.2), "stop_intake returned while a hand-over was in progress"
    writer.release.set()
    wait_until(stopped.is_set, message="stop_intake to return")
    assert len(writer.got) == 1
    sub._on_message(None, None, _message(2))
    assert len(writer.got) == 1
    receiving.join(5)
    stopper.join(5)
