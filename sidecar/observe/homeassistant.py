"""Home Assistant MQTT discovery (README "Home Assistant"): retained sensor configs under
``<prefix>/sensor/<node_id>/<object_id>/config`` for one device, "kairo-sidecar", and a
retained state JSON every ``interval``. Availability is the daemon's own state topic
(``[mqtt] state_topic``): ``online`` retained at connect, ``offline`` at a clean stop and as
the MQTT Will (``sidecar.broker.subscriber``).

With ``discovery = false`` the daemon publishes an empty retained message on each config topic
at start (cheap, stateless): a device that was announced before disappears from Home
Assistant, and a broker that never saw one is left as it was."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from sidecar import __version__
from sidecar.config import HomeAssistantConfig
from sidecar.logs import get_logger
from sidecar.observe.sources import Sources

log = get_logger("sidecar.homeassistant")

Publish = Callable[..., Any]  # Subscriber.publish(topic, payload, *, retain=...)
DEVICE_NAME = "kairo-sidecar"


class Sensor(NamedTuple):
    object_id: str
    name: str
    unit: str | None
    device_class: str | None
    state_class: str
    icon: str | None = None


SENSORS = (
    Sensor("events_per_minute", "Events per minute", "events/min", None, "measurement",
           "mdi:chart-line"),
    Sensor("events_total", "Events stored", "events", None, "total", "mdi:database"),
    Sensor("dead_letters", "Dead letters", "messages", None, "total", "mdi:email-alert"),
    Sensor("database_bytes", "Database size", "B", "data_size", "measurement"),
    Sensor("wal_bytes", "WAL size", "B", "data_size", "measurement"),
    Sensor("last_event_age_s", "Last event age", "s", "duration", "measurement"),
)


class State(msgspec.Struct, frozen=True, kw_only=True):
    """The retained state JSON every sensor reads its value from (``value_json.<object_id>``)."""

    events_per_minute: float
    events_total: int
    dead_letters: int
    database_bytes: int
    wal_bytes: int
    last_event_age_s: float | None
    queue_depth: int


def config_topic(cfg: HomeAssistantConfig, sensor: Sensor) -> str:
    return f"{cfg.prefix}/sensor/{cfg.node_id}/{sensor.object_id}/config"


def discovery_configs(cfg: HomeAssistantConfig, *, state_topic: str,
                      availability_topic: str) -> dict[str, bytes]:
    """Config topic -> the retained discovery payload (JSON) of each sensor."""
    device = {"identifiers": [cfg.node_id], "name": DEVICE_NAME, "manufacturer": "Kairo",
              "model": "kairo-sidecar", "sw_version": __version__}
    out: dict[str, bytes] = {}
    for sensor in SENSORS:
        body: dict[str, Any] = {
            "name": sensor.name,
            "unique_id": f"{cfg.node_id}_{sensor.object_id}",
            "object_id": f"{cfg.node_id}_{sensor.object_id}",
            "state_topic": state_topic,
            "value_template": f"{{{{ value_json.{sensor.object_id} }}}}",
            "availability": [{"topic": availability_topic, "payload_available": "online",
                              "payload_not_available": "offline"}],
            "state_class": sensor.state_class,
            "device": device,
            "origin": {"name": "kairo-sidecar", "sw_version": __version__},
        }
        if sensor.unit:
            body["unit_of_measurement"] = sensor.unit
        if sensor.device_class:
            body["device_class"] = sensor.device_class
        if sensor.icon:
            body["icon"] = sensor.icon
        out[config_topic(cfg, sensor)] = msgspec.json.encode(body)
    return out


class Announcer:
    """A thread: the configs (at each new connection) and the state every ``interval`` while
    ``discovery`` is on; the empty retained configs once at the first connection while off."""

    def __init__(self, cfg: HomeAssistantConfig, sources: Sources, *, publish: Publish,
                 connected: Callable[[], bool], state_topic: str,
                 availability_topic: str) -> None:
        self._cfg = cfg
        self._sources = sources
        self._publish = publish
        self._connected = connected
        self.state_topic = state_topic
        self._configs = discovery_configs(cfg, state_topic=state_topic,
                                          availability_topic=availability_topic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, int] | None = None  # (monotonic, events_stored) of last state

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kairo-homeassistant", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        announced = False  # configs published on the current connection
        next_state = 0.0
        while not self._stop.is_set():
            if not self._connected():
                announced = False
            elif not announced:
                announced = True
                if not self._cfg.discovery:
                    self._clear()
                    return
                self._announce()
                next_state = 0.0
            if announced and time.monotonic() >= next_state:
                next_state = time.monotonic() + self._cfg.interval
                try:
                    self._publish(self.state_topic, msgspec.json.encode(self.state()),
                                  content_type="application/json", retain=True)
                except Exception as exc:  # a figure that cannot be read: try again next time
                    log.warning("homeassistant_state_failed", error=repr(exc))
            self._stop.wait(1.0)

    def _announce(self) -> None:
        for topic, payload in self._configs.items():
            self._publish(topic, payload, content_type="application/json", retain=True)
        log.info("homeassistant_announced", sensors=len(self._configs), prefix=self._cfg.prefix,
                 node_id=self._cfg.node_id, state_topic=self.state_topic)

    def _clear(self) -> None:
        for topic in self._configs:
            self._publish(topic, b"", retain=True)
        log.info("homeassistant_cleared", sensors=len(self._configs), prefix=self._cfg.prefix,
                 node_id=self._cfg.node_id)

    def state(self) -> State:
        """The figures now; events per minute since the previous state (or since start)."""
        stats = self._sources.stats
        store = self._sources.store.figures()
        now = time.monotonic()
        stored = stats.events_stored
        since, before = self._last if self._last is not None else (
            now - max(1e-3, time.time() - stats.started_at), 0)
        self._last = (now, stored)
        rate = (stored - before) * 60.0 / max(1e-3, now - since)
        newest = store.newest_event_at
        age = None if newest is None else round(max(0.0, time.time() - newest / 1000), 1)
        return State(events_per_minute=round(rate, 2), events_total=store.events_total,
                     dead_letters=store.dead_letters_total, database_bytes=store.database_bytes,
                     wal_bytes=store.wal_bytes, last_event_age_s=age,
                     queue_depth=self._sources.queue_depth())
