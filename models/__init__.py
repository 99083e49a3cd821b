"""Peewee models: tables only, bound later to the database through ``database_proxy``."""

from __future__ import annotations

from .base import BaseModel, SequenceField, database_proxy
from .tables import ALL_MODELS, DeadLetter, DeliveryId, Event, EventType, KVStore

__all__ = ["ALL_MODELS", "BaseModel", "DeadLetter", "DeliveryId", "Event", "EventType", "KVStore",
           "SequenceField",
           "database_proxy"]
