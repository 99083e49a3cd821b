"""The HTTP listener (/metrics, /healthz), Home Assistant discovery and ``top``, against a real
Mosquitto and a real SQLite file, with the daemon running in-process (``Sidecar.run``)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Sidecar
from sidecar.client import SidecarClient
from sidecar.config import load_config
from sidecar.core.reasons import dead_letter_kind
from tests.conftest import ROOT, count_rows, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Message, encode, event_messages, make_event, publish_all

TOKEN = "s3cret-token-for-tests-only"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(tmp_path: Path, broker: Broker, **overrides: str) -> dict[str, str]:
    env = {
        "KAIRO_SIDECAR_MQTT__HOST": broker.host, "KAIRO_SIDECAR_MQTT__PORT": str(broker.port),
        "KAIRO_SIDECAR_MQTT__CLIENT_ID": f"kairo-obs-{uuid.uuid4().hex[:8]}",
        "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{tmp_path / 'kairo.db'}",
        "KAIRO_SIDECAR_WRITER__FLUSH_INTERVAL": "0.2",
    }
    env.update({"KAIRO_SIDECAR_" + k.upper(): v for k, v in overrides.items()})
    return env


class Running:
    """A ``Sidecar`` on a thread; ``stop()`` asks it to stop and waits."""

    def __init__(self, env: dict[str, str]) -> None:
        self.config = load_config(environ=env)
        self.sidecar = Sidecar(self.config)
        self.ready = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.sidecar.run(install_signals=False, on_ready=self.ready.set)

    def start(self) -> Running:
        self.thread.start()
        assert self.ready.wait(20), "the sidecar did not become ready"
        return self

    @property
    def base(self) -> str:
        address = self.config.http.address
        assert address is not None
        return f"http://{address[0]}:{address[1]}"

    def stop(self) -> None:
        self.sidecar.request_stop()
        self.thread.join(30)


@pytest.fixture
def running() -> Iterator[Callable[[dict[str, str]], Running]]:
    made: list[Running] = []

    def make(env: dict[str, str]) -> Running:
        run = Running(env).start()
        made.append(run)
        return run

    try:
        yield make
    finally:
        for run in made:
            run.stop()


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(run: Running, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(run.base + "/metrics", token)
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def db_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# ------------------------------------------------------------------------------ /metrics
def test_metrics_counters_match_the_database(tmp_path: Path, broker: Broker, running) -> None:
    """After a real ingest run (events, a redelivery, a conflict, bad payloads) the counters of
    /metrics equal the rows in the database: events stored, dead letters by reason kind."""
    run = running(env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}"))
    good = event_messages(40, prefix="obs")
    again = good[:5]  # redeliveries: same id, same body
    changed = dict(make_event(0, prefix="obs"), type="kairo.test.other")
    conflict = Message("conflict", "kairo/test/x", encode(changed))
    bad = [Message(f"bad-{i}", "kairo/test/bad", b"not json %d" % i) for i in range(3)]
    publish_all(broker.host, broker.port, good)
    publish_all(broker.host, broker.port, [*again, conflict, *bad])
    db = tmp_path / "kairo.db"
    wait_until(lambda: count_rows(db) == 40 and count_rows(db, "dead_letters") == 4,
               timeout=20, message="40 events and 4 dead letters")
    with SidecarClient(broker.host, broker.port, timeout=10) as client:
        client.stats()

    def settled() -> dict[Any, float] | None:
        # the stats answer is counted after it is sent; group commit releases acks after a sync
        m = scrape(run)
        counted = m.get(("kairo_sidecar_api_requests_total", (("op", "stats"), ("status", "ok"))))
        return m if counted == 1 and m[("kairo_sidecar_inflight_acks", ())] == 0 else None

    metrics = wait_until(settled, message="the stats request counted and every ack sent")
    assert isinstance(metrics, dict)
    assert metrics[("kairo_sidecar_events_stored_total", ())] == count_rows(db) == 40
    assert metrics[("kairo_sidecar_duplicates_total", ())] == 5
    by_kind: dict[str, int] = {}
    for (reason,) in db_rows(db, "SELECT reason FROM dead_letters"):
        by_kind[dead_letter_kind(reason)] = by_kind.get(dead_letter_kind(reason), 0) + 1
    assert by_kind == {"payload": 3, "conflict": 1}
    for kind in ("payload", "conflict", "storage", "kv"):
        assert metrics[("kairo_sidecar_dead_letters_total", (("reason", kind),))] == \
            by_kind.get(kind, 0), kind
    batches = metrics[("kairo_sidecar_commit_seconds_count", ())]
    assert batches >= 1 and metrics[("kairo_sidecar_batch_rows_count", ())] == batches
    assert metrics[("kairo_sidecar_batch_rows_sum", ())] == 40 + 5 + 1 + 3
    assert metrics[("kairo_sidecar_batch_rows_bucket", (("le", "+Inf"),))] == batches
    assert metrics[("kairo_sidecar_database_bytes", ())] == db.stat().st_size
    assert metrics[("kairo_sidecar_queue_depth", ())] == 0
    assert metrics[("kairo_sidecar_broker_connected", ())] == 1
    assert metrics[("kairo_sidecar_writer_up", ())] == 1
    if Path("/proc/self/io").exists():
        assert metrics[("kairo_sidecar_process_written_bytes_total", ())] > 0


def test_grafana_dashboard_uses_only_scraped_metrics(tmp_path: Path, broker: Broker, running) -> None:
    """deploy/grafana-kairo-sidecar.json is valid JSON and every kairo_sidecar_* name in its
    queries is in a real scrape (a renamed metric breaks this test, not the dashboard)."""
    import re

    dashboard = json.loads((ROOT / "deploy" / "grafana-kairo-sidecar.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = set(re.findall(r"kairo_sidecar_[a-z0-9_]+", " ".join(queries)))
    assert len(names) >= 10, names
    run = running(env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}"))
    publish_all(broker.host, broker.port, event_messages(3, prefix="graf"))
    wait_until(lambda: count_rows(tmp_path / "kairo.db") == 3, message="3 events")
    status, body = get(run.base + "/metrics")
    assert status == 200
    exposed: set[str] = set()  # every sample name a family can have, samples or not yet
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",)}
    for family in text_string_to_metric_families(body.decode()):
        exposed.update(family.name + s for s in suffixes.get(family.type, ("",)))
        exposed.update(s.name for s in family.samples)
    assert names <= exposed, names - exposed


# ------------------------------------------------------------------------------ /healthz
def test_healthz_503_while_the_writer_is_stalled(tmp_path: Path, broker: Broker, running) -> None:
    """/healthz is 200 while the writer loops, 503 (naming the stall) while a write blocks
    longer than the watchdog's stall rule allows, and 200 again once it moves."""
    run = running(env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}",
                          database__busy_timeout_ms="50", writer__flush_interval="0.05",
                          writer__retry_max_delay="0.2"))
    status, body = get(run.base + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["healthy"] and health["broker_connected"], health
    writer = run.sidecar.writer
    assert writer is not None
    release, blocked = threading.Event(), threading.Event()
    real_write = writer._write

    def stuck_write(batch: list[Any]) -> None:
        blocked.set()
        release.wait(60)
        return real_write(batch)

    writer._write = stuck_write  # type: ignore[method-assign]
    try:
        publish_all(broker.host, broker.port, event_messages(1, prefix="stall"))
        assert blocked.wait(10)
        wait_until(lambda: get(run.base + "/healthz")[0] == 503, timeout=15,
                   message="/healthz to say 503")
        health = json.loads(get(run.base + "/healthz")[1])
        assert not health["healthy"] and "writer stalled" in health["problems"][0], health
        assert health["writer_alive"] is True
    finally:
        release.set()
    wait_until(lambda: get(run.base + "/healthz")[0] == 200, timeout=15, message="200 again")


# ------------------------------------------------------------------------------ token
def test_token_is_required_when_set(tmp_path: Path, broker: Broker, running) -> None:
    """With [http] token every page needs ``Authorization: Bearer <token>``: 401 without it or
    with a wrong one, 200 with it (bound to loopback only, as every test)."""
    run = running(env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}",
                          http__token=TOKEN))
    for path in ("/metrics", "/healthz"):
        status, body = get(run.base + path)
        assert status == 401 and b"token" in body
        assert get(run.base + path, "wrong-token-of-some-length")[0] == 401
        assert get(run.base + path, TOKEN)[0] == 200
    assert get(run.base + "/nope", TOKEN)[0] == 404
    assert get(run.base + "/metrics?" + "x=1&" * 2000, TOKEN)[0] == 414
    assert get(run.base + "/../../etc/passwd", TOKEN)[0] == 404
    assert get(run.base + "/metrics?" + "a=1&" * 40, TOKEN)[0] == 400
    assert get(run.base + "/healthz", TOKEN)[0] == 200  # still serving


# ------------------------------------------------------------------------------ Home Assistant
class Retained:
    """Collect the retained messages under a filter (subscribe, wait for the burst)."""

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        self.messages: dict[str, bytes] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"ha-watch-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.messages[msg.topic] = msg.payload

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


HA_FIELDS = ("name", "unique_id", "state_topic", "availability", "device")


def test_home_assistant_discovery_then_cleared(tmp_path: Path, broker: Broker, running) -> None:
    """discovery = true publishes retained sensor configs with HA's fields (name, unique_id,
    state_topic, availability, device with identifiers) and a state JSON they read from;
    after a restart with discovery = false the configs are cleared (empty retained)."""
    env = env_for(tmp_path, broker, homeassistant__discovery="true",
                  homeassistant__interval="5s")
    run = running(env)
    publish_all(broker.host, broker.port, event_messages(7, prefix="ha"))
    wait_until(lambda: count_rows(tmp_path / "kairo.db") == 7, message="7 events")
    watch = Retained(broker, "homeassistant/#")
    try:
        wait_until(lambda: len(watch.messages) >= 6, message="6 discovery configs")
        configs = {t: json.loads(p) for t, p in watch.messages.items()}
    finally:
        watch.close()
    assert all(t.startswith("homeassistant/sensor/kairo_sidecar/") and t.endswith("/config")
               for t in configs), sorted(configs)
    state_topics = set()
    for topic, cfg in configs.items():
        missing = [f for f in HA_FIELDS if f not in cfg]
        assert not missing, (topic, missing)
        assert cfg["device"]["identifiers"] == ["kairo_sidecar"]
        assert cfg["device"]["name"] == "kairo-sidecar"
        assert cfg["availability"][0]["topic"] == "kairo-sidecar/state"
        assert cfg["value_template"].startswith("{{ value_json.")
        state_topics.add(cfg["state_topic"])
    assert len({c["unique_id"] for c in configs.values()}) == len(configs) == 6
    assert state_topics == {"kairo-sidecar/status"}
    status = Retained(broker, "kairo-sidecar/#")
    try:
        wait_until(lambda: json.loads(status.messages.get("kairo-sidecar/status", b"{}"))
                   .get("events_total") == 7, timeout=15, message="a state with 7 events")
        state = json.loads(status.messages["kairo-sidecar/status"])
        assert status.messages["kairo-sidecar/state"] == b"online"
    finally:
        status.close()
    for cfg in configs.values():  # every sensor's value is in the state
        key = cfg["value_template"].removeprefix("{{ value_json.").removesuffix(" }}")
        assert key in state, key
    assert state["dead_letters"] == 0 and state["database_bytes"] > 0
    run.stop()

    env["KAIRO_SIDECAR_HOMEASSISTANT__DISCOVERY"] = "false"
    running(env)
    wait_until(lambda: not retained_now(broker, "homeassistant/#"), timeout=15,
               message="the discovery configs cleared")


def retained_now(broker: Broker, topic_filter: str) -> set[str]:
    """The topics under ``topic_filter`` the broker holds a retained message for now: a fresh
    subscription, closed by a probe published after it (the broker keeps no empty retained)."""
    watch = Retained(broker, topic_filter)
    probe_topic = topic_filter.rstrip("#") + f"probe-{uuid.uuid4().hex[:6]}"
    try:
        probe = paho.Client(CallbackAPIVersion.VERSION2)
        probe.connect(broker.host, broker.port)
        probe.loop_start()
        probe.publish(probe_topic, b"x", qos=1).wait_for_publish(10)
        probe.loop_stop()
        probe.disconnect()
        wait_until(lambda: probe_topic in watch.messages, message="the probe")
        return {t for t, p in watch.messages.items() if p and t != probe_topic}
    finally:
        watch.close()


# ------------------------------------------------------------------------------ top
def test_top_once_prints_the_figures(tmp_path: Path, broker: Broker, running) -> None:
    """``kairo-sidecar top --once`` (a real process) reads /metrics of the running daemon and
    prints the figures: events stored, queue, commit latency, database size."""
    env = env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}")
    running(env)
    publish_all(broker.host, broker.port, event_messages(12, prefix="top"))
    wait_until(lambda: count_rows(tmp_path / "kairo.db") == 12, message="12 events")
    out = subprocess.run([sys.executable, "-m", "sidecar", "top", "--once"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = {line.split("  ")[0]: line for line in out.stdout.splitlines()}
    assert lines["events stored"].split()[2] == "12", out.stdout
    assert "queue depth" in lines and "ms" in lines["commit latency"], out.stdout
    assert "database" in lines and "writer up" in out.stdout, out.stdout


def test_top_once_without_listener_asks_the_broker(tmp_path: Path, broker: Broker, running) -> None:
    """Without [http] listen, ``top --once`` gets the figures from the ``stats`` request."""
    env = env_for(tmp_path, broker)
    running(env)
    publish_all(broker.host, broker.port, event_messages(4, prefix="topm"))
    wait_until(lambda: count_rows(tmp_path / "kairo.db") == 4, message="4 events")
    out = subprocess.run([sys.executable, "-m", "sidecar", "top", "--once"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "mqtt" in out.stdout and " 4 " in out.stdout.split("events stored")[1].splitlines()[0]
