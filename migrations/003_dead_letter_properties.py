"""Peewee migrations -- 003_dead_letter_properties.py: keep a dead letter's MQTT 5 properties.

``content_type`` (the Content Type property) and ``user_properties`` (a JSON array of
``[name, value]`` pairs) decide how ingest decodes a message (a binary-mode CloudEvent has its
attributes in user properties). Stored with the dead letter, they let ``kairo-sidecar
dead-letters reingest`` run the same decode as live ingest. Both are NULL for dead letters
stored before this migration (and for messages without them).
"""

from __future__ import annotations

import peewee as pw
from peewee_migrate import Migrator


def migrate(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql("ALTER TABLE dead_letters ADD COLUMN content_type TEXT")
    migrator.sql("ALTER TABLE dead_letters ADD COLUMN user_properties TEXT")


def rollback(migrator: Migrator, database: pw.Database, *, fake=False):
    migrator.sql("ALTER TABLE dead_letters DROP COLUMN user_properties")
    migrator.sql("ALTER TABLE dead_letters DROP COLUMN content_type")
