"""The tables of the store: events, dead_letters, kv_store."""

from __future__ import annotations

import peewee

from .base import BaseModel, SequenceField


class Event(BaseModel):
    """One stored event. ``seq`` is the global, never reused replay cursor.

    ``id``, ``correlation_id``, ``causation_id`` and ``trace_id`` are found through
    ``event_keys`` (a contentless FTS5 table, rowid = ``seq``, migration 004; new events are
    indexed in batches, migration 009, ``sidecar.storage.keys``), not through B-tree indexes:
    a B-tree keyed by a random value dirties a page per event on every commit. ``id`` is
    unique by the writer's check in the insert transaction, not by a constraint.
    """

    seq = SequenceField()
    id = peewee.TextField()
    topic = peewee.TextField()
    type = peewee.TextField()
    source = peewee.TextField()
    payload = peewee.TextField()  # JSON text
    metadata = peewee.TextField()  # JSON text
    created_at = peewee.BigIntegerField()  # ms since the epoch, from the event or receive time
    received_at = peewee.BigIntegerField()  # ms since the epoch
    correlation_id = peewee.TextField(null=True)
    causation_id = peewee.TextField(null=True)
    trace_id = peewee.TextField(null=True)

    class Meta:
        table_name = "events"
        indexes = (
            # time ranges, with the type tested in the index (queries, retention by age);
            # a type's events in seq order come from event_keys (migration 005)
            (("created_at", "type"), False),
        )


class EventType(BaseModel):
    """Each stored event type once (a trigger on ``events`` adds new ones; migration 005): a
    type glob expands to the stored types it matches without reading events."""

    type = peewee.TextField(primary_key=True)

    class Meta:
        table_name = "event_types"
        without_rowid = True


class DeadLetter(BaseModel):
    """A message that could not be stored as an event, with the reason."""

    id = peewee.BigAutoField()
    topic = peewee.TextField()
    payload = peewee.BlobField()  # raw bytes, capped at [ingest] dead_letter_max_bytes
    payload_size = peewee.IntegerField()  # the original size before capping
    reason = peewee.TextField()
    received_at = peewee.BigIntegerField()
    content_type = peewee.TextField(null=True)  # the MQTT 5 Content Type; migration 003
    user_properties = peewee.TextField(null=True)  # JSON [[name, value], ...]; migration 003

    class Meta:
        table_name = "dead_letters"


class KVStore(BaseModel):
    """The key-value store (``kv/*`` requests, ``sidecar.storage.kv``; migration 006): one row
    per key, ``version`` 1 at the first put and +1 per put (compare-and-set)."""

    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()  # JSON text
    version = peewee.IntegerField(default=1)
    updated_at = peewee.BigIntegerField()  # ms since the epoch
    # the seq of the event a projection last folded into the row; NULL after a kv/put
    # (migration 007; partial index kv_store_seq: kv/watch reads projected changes by it)
    seq = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "kv_store"


class DeliveryId(BaseModel):
    """The id given to the last id-less QoS 1 message per MQTT packet id.

    A broker re-sends an unacknowledged message with its original packet id and DUP set; this
    lets the writer give the copy the same generated id, so insert-or-ignore drops it.
    """

    mid = peewee.IntegerField(primary_key=True)
    event_id = peewee.TextField()
    digest = peewee.BlobField()

    class Meta:
        table_name = "delivery_ids"


ALL_MODELS = (Event, EventType, DeadLetter, KVStore, DeliveryId)
