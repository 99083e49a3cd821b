"""Message -> delivery: what the paho network thread runs for every event (``on_event``).

Decode the message into an event row (``ingest.decode``) or, when it cannot be one, a dead
letter; wrap it with its packet id and connection generation as a ``Delivery``; submit it to the
writer. The writer refuses a QoS 0 delivery when its queue is full (counted in its stats and
logged here, rate-limited); a QoS 1 one waits for room instead (see ``Writer.submit``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from sidecar.config import IngestConfig
from sidecar.core import kv
from sidecar.core.decode_errors import decode_failure
from sidecar.core.events import DeadLetterRow, EventRow
from sidecar.core.inbound import InboundMessage
from sidecar.core.projections import Projection, refuse_owned
from sidecar.core.stats import Stats
from sidecar.errors import PayloadError, RequestError
from sidecar.ingest.decode import dead_letter, decode_message
from sidecar.ingest.tasks import KvOutcome, KvTask
from sidecar.ingest.writer import Delivery
from sidecar.logs import RateLimited, get_logger

log = get_logger("sidecar.mqtt")  # the events' names and logger are the subscriber's of old


class Submit(Protocol):
    """What intake needs of the writer (``sidecar.ingest.writer.Writer``)."""

    stats: Stats

    def submit(self, delivery: Delivery) -> bool: ...

    def submit_kv(self, task: KvTask) -> None: ...

    @property
    def depth(self) -> int: ...


class Intake:
    """Turns inbound event messages into deliveries queued on the writer."""

    def __init__(self, writer: Submit, config: IngestConfig, *, kv_prefix: str | None = None,
                 kv_max_value_bytes: int = 65536, projections: Sequence[Projection] = ()) -> None:
        self._writer = writer
        self._kv_prefix = kv_prefix  # "<base>/kv/set/": the MQTT form of kv put/delete
        self._kv_max_value_bytes = kv_max_value_bytes
        self._projections = projections  # their prefixes take no kv/set
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
        if self._kv_prefix is not None and msg.topic.startswith(self._kv_prefix):
            self._kv_set(msg)
            return
        if not writer.submit(Delivery(row, msg.qos, msg.mid, msg.generation, msg.dup)):
            allowed, _ = self._drop_log.allow()
            if allowed:
                log.warning("qos0_dropped_queue_full", total=writer.stats.qos0_dropped,
                            queue_size=writer.depth)

    def _kv_set(self, msg: InboundMessage) -> None:
        """``<base>/kv/set/<key>``: the JSON payload is the value (empty: delete the key). The
        write goes to the writer as a task; the PUBACK leaves once it is durable. An invalid
        message becomes a dead letter with the reason (acked with it)."""
        assert self._kv_prefix is not None
        key = msg.topic[len(self._kv_prefix):]
        try:
            kv.check_key(key, field="topic")
            refuse_owned(self._projections, key, field="topic")
            if not bytes(msg.payload).strip():
                write = kv.KvWrite(op="delete", key=key)
            else:
                try:
                    value = msgspec.json.decode(msg.payload)
                except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                    raise RequestError("bad_request", "value: not JSON: "
                                       + decode_failure(msg.payload, "json")) from None
                text = kv.check_value(msgspec.json.encode(value),
                                      max_bytes=self._kv_max_value_bytes)
                write = kv.KvWrite(op="put", key=key, value=text, same_is_noop=True)
        except RequestError as exc:
            reason = f"kv set refused: {exc.message}"
            log.warning("kv_set_rejected", topic=msg.topic, reason=reason)
            self._writer.submit(Delivery(dead_letter(
                msg.topic, msg.payload, reason, received_at=msg.received_at,
                max_bytes=self._dead_letter_max_bytes, content_type=msg.content_type,
                user_properties=msg.user_properties), msg.qos, msg.mid, msg.generation, msg.dup))
            return
        ack = (msg.generation, msg.mid) if msg.qos else None
        self._writer.submit_kv(KvTask(write, _logged(write), ack))

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


def _logged(write: kv.KvWrite) -> Callable[[KvOutcome], None]:
    """What a ``kv/set`` task does with its outcome: nobody waits for it, so log a refusal."""

    def done(outcome: KvOutcome) -> None:
        if isinstance(outcome, RequestError):
            log.info("kv_set_not_applied", key=write.key, op=write.op, code=outcome.code,
                     message=outcome.message)

    return done
