"""The broker package as a pure transport: its imports, ``attach``, and the InboundMessage it
hands on (no broker needed: messages are handed in directly)."""

from __future__ import annotations

import subprocess
import sys

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sidecar.api.protocol import RequestMessage, request_from_inbound
from sidecar.broker.subscriber import Subscriber
from sidecar.config import MQTTConfig
from sidecar.core.inbound import InboundMessage


def _message(topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 7,
             properties: Properties | None = None) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=topic)
    msg.payload, msg.qos, msg.properties = payload, qos, properties
    return msg


def test_broker_imports_no_ingest_api_or_storage():
    """Importing the subscriber loads nothing of sidecar.ingest, sidecar.api or sidecar.storage."""
    code = ("import sys, sidecar.broker.subscriber; print(sorted(m for m in sys.modules "
            "if m.startswith(('sidecar.ingest', 'sidecar.api', 'sidecar.storage'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_attach_is_required_before_start_and_matches_the_request_subscription():
    """start() without attach is refused; on_request is required exactly when requests are
    subscribed (api_base_topic)."""
    with pytest.raises(RuntimeError, match="attach"):
        Subscriber(MQTTConfig(), queue_size=10).start()
    with pytest.raises(ValueError, match="on_request"):
        Subscriber(MQTTConfig(), queue_size=10, api_base_topic="kb").attach(on_event=print)
    with pytest.raises(ValueError, match="on_request"):
        Subscriber(MQTTConfig(), queue_size=10).attach(on_event=print, on_request=print)


def test_events_and_requests_go_to_their_callbacks_as_inbound_messages():
    """An event reaches on_event with its ack token and MQTT 5 properties; a request reaches
    on_request and becomes the RequestMessage the API decodes."""
    events: list[InboundMessage] = []
    requests: list[InboundMessage] = []
    sub = Subscriber(MQTTConfig(), queue_size=10, api_base_topic="kb")
    sub.attach(on_event=events.append, on_request=requests.append)
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.UserProperty = [("k", "v")]
    sub._on_message(sub._client, None, _message(b"kairo/a", b"{}", properties=props))
    sub._on_message(sub._client, None, _message(b"kairo/b", b"{}", qos=0, mid=0))
    req = Properties(PacketTypes.PUBLISH)
    req.ResponseTopic = "me/answers"
    req.CorrelationData = b"c-1"
    sub._on_message(sub._client, None, _message(b"kb/request/query", b'{"limit": 1}',
                                                properties=req))
    first, second = events
    assert (first.topic, first.payload, first.token) == ("kairo/a", b"{}", (0, 7))
    assert (first.content_type, first.user_properties) == ("application/json", [("k", "v")])
    assert second.token is None and second.content_type is None
    assert first.received_at > 0
    (request,) = requests
    assert request_from_inbound(request, prefix="kb/request/") == RequestMessage(
        op="query", payload=b'{"limit": 1}', response_topic="me/answers",
        correlation_data=b"c-1", content_type=None, retain=False)
