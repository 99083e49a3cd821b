"""One MQTT message as the transport hands it on: plain values, no paho types.

``sidecar.broker`` builds it on the paho network thread and passes it to the ``on_event`` and
``on_request`` callbacks; ``sidecar.ingest.intake`` turns an event into a delivery for the
writer, ``sidecar.api.protocol`` a request into its ``RequestMessage``. It lives in ``core``
because those three packages may not import each other.
"""

from __future__ import annotations

from typing import NamedTuple

from sidecar.core.events import Data

AckToken = tuple[int, int]  # (connection generation, packet id), for ``Subscriber.ack``


class InboundMessage(NamedTuple):
    """A received PUBLISH. ``generation`` and ``mid`` identify it for the ack (QoS 1 only)."""

    topic: str
    payload: Data  # bytes from paho
    qos: int
    retain: bool
    dup: bool
    mid: int  # packet id (0 for QoS 0)
    generation: int  # the connection it arrived on: packet ids restart with every connection
    received_at: int  # Unix ms
    content_type: str | None = None
    user_properties: list[tuple[str, str]] | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None

    @property
    def token(self) -> AckToken | None:
        """What to pass to ``Subscriber.ack`` once stored; None for QoS 0 (nothing to ack)."""
        return (self.generation, self.mid) if self.qos else None
