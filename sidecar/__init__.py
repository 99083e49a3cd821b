"""kairo-sidecar: a durable event store for the Kairo MQTT event bus."""

from __future__ import annotations

__version__ = "0.1.0"
