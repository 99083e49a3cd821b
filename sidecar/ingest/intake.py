"""Message -> delivery: what the paho network thread runs for every event (``on_event``).

Decode the message into an event row (``ingest.decode``) or, when it cannot be one, a dead
letter; wrap it with its packet id and connection generation as a ``Delivery``; submit it to the
writer. The writer refuses a QoS 0 delivery when its queue is full (counted in its stats and
logged here, rate-limited); a QoS 1 one waits for room instead (see ``Writer.submit``).
"""

from __future__ import annotations

from typing import Protocol

from sidecar.config import IngestConfig
from sidecar.core.events import DeadLetterRow, EventRow
from sidecar.core.inbound import InboundMessage
from sidecar.core.stats import Stats
from sidecar.errors import PayloadError
from sidecar.ingest.decode import dead_letter, decode_message
from sidecar.ingest.writer import Delivery
from sidecar.logs import RateLimited, get_logger

log = get_logger("sidecar.mqtt")  # the events' names and logger are the subscriber's of old


class Submit(Protocol):
    """What intake needs of the writer (``sidecar.ingest.writer.Writer``)."""

    stats: Stats

    def submit(self, delivery: Delivery) -> bool: ...

    @property
    def depth(self) -> int: ...


class Intake:
    """Turns inbound event messages into deliveries queued on the writer."""

    def __init__(self, writer: Submit, config: IngestConfig) -> None:
        self._writer = writer
        self._max_payload_bytes = config.max_payload_bytes
        self._dead_letter_max_bytes = config.dead_letter_max_bytes
        self._dead_log = RateLimited(period=10.0, burst=10)
        self._drop_log = RateLimited(period=10.0, burst=1)

    def receive(self, msg: InboundMessage) -> None:
        """Decode ``msg`` and queue it for the writer (network thread; never raises for a bad
        message: that becomes a dead letter)."""
        try:
            row = self._to_row(msg)
        except Exception as exc:  # never let a message crash the network thread
            log.exception("message_handling_failed")
            row = dead_letter(msg.topic, msg.payload, f"internal error: {exc!r}",
                              received_at=msg.received_at, max_bytes=self._dead_letter_max_bytes)
        writer = self._writer
        if not writer.submit(Delivery(row, msg.qos, msg.mid, msg.generation, msg.dup)):
            allowed, _ = self._drop_log.allow()
            if allowed:
                log.warning("qos0_dropped_queue_full", total=writer.stats.qos0_dropped,
                            queue_size=writer.depth)

    def _to_row(self, msg: InboundMessage) -> EventRow | DeadLetterRow:
        try:
            return decode_message(msg.topic, msg.payload, received_at=msg.received_at,
                                  max_payload_bytes=self._max_payload_bytes,
                                  content_type=msg.content_type,
                                  user_properties=msg.user_properties)
        except PayloadError as exc:
            allowed, suppressed = self._dead_log.allow()
            if allowed:
                log.warning("event_rejected", topic=msg.topic, reason=exc.reason,
                            size=len(msg.payload), suppressed=suppressed)
            return dead_letter(msg.topic, msg.payload, exc.reason, received_at=msg.received_at,
                               max_bytes=self._dead_letter_max_bytes,
                               content_type=msg.content_type,
                               user_properties=msg.user_properties)
