"""Peewee migrations -- 001_initial.py: events, dead_letters, kv_store, delivery_ids."""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


class _Sequence(pw.BigAutoField):
    """Never-reused key: AUTOINCREMENT on SQLite, a plain sequence elsewhere."""

    def ddl(self, ctx):
        node = super().ddl(ctx)
        db = self.model._meta.database
        if isinstance(getattr(db, "obj", db), pw.SqliteDatabase):
            return pw.NodeList((node, pw.SQL("AUTOINCREMENT")))
        return node


class _Json(pw.TextField):
    """JSON text on SQLite, JSONB on PostgreSQL."""

    def ddl_datatype(self, ctx):
        db = self.model._meta.database
        if isinstance(getattr(db, "obj", db), pw.PostgresqlDatabase):
            return pw.SQL("JSONB")
        return super().ddl_datatype(ctx)


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    @migrator.create_model
    class Event(pw.Model):
        seq = _Sequence()
        id = pw.TextField(unique=True)
        topic = pw.TextField()
        type = pw.TextField()
        source = pw.TextField()
        payload = _Json()
        metadata = _Json()
        created_at = pw.BigIntegerField()
        received_at = pw.BigIntegerField()
        correlation_id = pw.TextField(null=True)
        causation_id = pw.TextField(null=True)
        trace_id = pw.TextField(null=True)

        class Meta:
            table_name = "events"
            legacy_table_names = False
            indexes = ((("type", "created_at"), False), (("created_at",), False))

    Event.add_index(Event.index(Event.correlation_id, name="events_correlation_id")
                    .where(Event.correlation_id.is_null(False)))
    Event.add_index(Event.index(Event.trace_id, name="events_trace_id")
                    .where(Event.trace_id.is_null(False)))

    @migrator.create_model
    class DeadLetter(pw.Model):
        id = pw.BigAutoField()
        topic = pw.TextField()
        payload = pw.BlobField()
        payload_size = pw.IntegerField()
        reason = pw.TextField()
        received_at = pw.BigIntegerField()

        class Meta:
            table_name = "dead_letters"

    @migrator.create_model
    class KVStore(pw.Model):
        key = pw.TextField(primary_key=True)
        value = pw.TextField()
        updated_at = pw.BigIntegerField()

        class Meta:
            table_name = "kv_store"

    @migrator.create_model
    class DeliveryId(pw.Model):
        mid = pw.IntegerField(primary_key=True)
        event_id = pw.TextField()
        digest = pw.BlobField()

        class Meta:
            table_name = "delivery_ids"


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.remove_model("delivery_ids")
    migrator.remove_model("kv_store")
    migrator.remove_model("dead_letters")
    migrator.remove_model("events")
