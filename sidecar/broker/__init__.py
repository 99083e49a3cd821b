"""The MQTT transport: the subscriber and the paho subclass. The only daemon package that
imports paho; it hands each message on as an ``InboundMessage`` (``on_event``/``on_request``
callbacks) and offers ``ack``/``publish``. It imports nothing of ingest, api or storage."""

from sidecar.core.inbound import AckToken, InboundMessage

__all__ = ["AckToken", "InboundMessage"]
