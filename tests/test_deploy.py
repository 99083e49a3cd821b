"""deploy/: the systemd unit (verified by systemd-analyze where it exists) and the Mosquitto
drop-in with its ACL, run by a real mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sidecar.config import WriterConfig
from tests.broker import free_port, mqtt_ready
from tests.conftest import ROOT, wait_until

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "kairo-sidecar.service"


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit -> its values in order (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(text: str) -> float:
    units = {"s": 1, "min": 60, "ms": 0.001, "h": 3600}
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def test_unit_declares_the_service_contract() -> None:
    """Type=notify with a watchdog, restart on failure, a dedicated user with a state
    directory, ordering after mosquitto, a stop timeout longer than the drain deadline, secrets
    from a file, and the hardening the issue lists."""
    s = unit_settings()

    def one(key: str) -> str:
        assert key in s, f"{key}= missing"
        return s[key][-1]

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert seconds(one("WatchdogSec")) >= 10
    assert one("Restart") == "on-failure"
    assert one("User") == "kairo-sidecar" and one("StateDirectory") == "kairo-sidecar"
    assert "mosquitto.service" in one("After") and "mosquitto.service" in one("Wants")
    assert seconds(one("TimeoutStopSec")) > WriterConfig().shutdown_timeout + 10
    assert one("EnvironmentFile").startswith("-/etc/kairo-sidecar/")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": ""}.items():
        assert one(key) == value, key
    assert "MemoryMax" in s
    assert "ReadWritePaths" not in s  # the state directory is the only writable path
    assert set(one("RestartPreventExitStatus").split()) == {"2", "3", "4", "6"}


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a warning (ExecStart pointed at this
    venv's kairo-sidecar). Skipped where systemd-analyze is not installed."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    binary = shutil.which("kairo-sidecar") or str(Path(sys.executable).parent / "kairo-sidecar")
    if not Path(binary).exists():
        pytest.skip("kairo-sidecar entry point not installed in this environment")
    unit = tmp_path / "kairo-sidecar.service"
    unit.write_text(UNIT.read_text().replace("/opt/kairo-sidecar/bin/kairo-sidecar", binary))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0 and "kairo-sidecar.service" not in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "kairo-sidecar.service" in line]
    assert complaints == [], "\n".join(complaints)


# ------------------------------------------------------------------------------ mosquitto
PASSWORDS = {"kairo-sidecar": "s3cret-sidecar", "device": "s3cret-device", "kairo-app": "s3cret-app"}


@pytest.fixture
def dropin_broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto started like Debian's: a main file that includes conf.d/, where our drop-in
    sits (password and ACL paths pointed into tmp_path) beside a test listener."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto (with mosquitto_passwd) not installed")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                       capture_output=True, timeout=30)
    shutil.copy(DEPLOY / "mosquitto.acl", tmp_path / "kairo.acl")
    dropin = (DEPLOY / "mosquitto.conf").read_text()
    dropin = dropin.replace("/etc/mosquitto/passwd", str(passwd))
    dropin = dropin.replace("/etc/mosquitto/kairo.acl", str(tmp_path / "kairo.acl"))
    (conf_d / "kairo.conf").write_text(dropin)
    port = free_port()
    (conf_d / "listener.conf").write_text(f"listener {port} 127.0.0.1\n")
    main = tmp_path / "mosquitto.conf"
    main.write_text("\n".join([
        *(["user root"] if os.geteuid() == 0 else []),
        "persistence true", f"persistence_location {tmp_path}/",
        f"log_dest file {tmp_path / 'mosquitto.log'}", f"include_dir {conf_d}", ""]))
    proc = subprocess.Popen([binary, "-c", str(main)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or mqtt_ready("127.0.0.1", port), timeout=10,
                   message="mosquitto with the drop-in")
        log = (tmp_path / "mosquitto.log").read_text() if (tmp_path / "mosquitto.log").exists() else ""
        assert proc.poll() is None, f"mosquitto refused the drop-in:\n{log}"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class Client:
    def __init__(self, port: int, user: str | None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{user}-{uuid.uuid4().hex[:6]}")
        if user is not None:
            self.client.username_pw_set(user, PASSWORDS[user])
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
        if reason.is_failure:
            self.refused = str(reason)
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_dropin_and_acl(dropin_broker: int) -> None:
    """Mosquitto accepts the drop-in; anonymous clients are refused; a device may publish
    events but not requests; the sidecar user reads events and requests."""
    port = dropin_broker
    anonymous = Client(port, None)
    assert anonymous.connected.wait(10) and anonymous.refused is not None
    anonymous.close()

    sidecar, device, app = Client(port, "kairo-sidecar"), Client(port, "device"), Client(port, "kairo-app")
    try:
        for c in (sidecar, device, app):
            assert c.connected.wait(10) and c.refused is None
        subscribed = threading.Event()
        sidecar.client.on_subscribe = lambda *a: subscribed.set()
        sidecar.client.subscribe([("kairo/#", 1), ("kairo-sidecar/request/#", 1)])
        assert subscribed.wait(10)
        # The device's forbidden request goes first; its event after it on the same
        # connection: once the event arrives, the request would have arrived before it.
        device.client.publish("kairo-sidecar/request/query", b"{}", qos=1).wait_for_publish(10)
        device.client.publish("kairo/device/reading", b"{}", qos=1).wait_for_publish(10)
        wait_until(lambda: "kairo/device/reading" in sidecar.topics(), message="the device event")
        assert "kairo-sidecar/request/query" not in sidecar.topics()
        app.client.publish("kairo-sidecar/request/stats", b"{}", qos=1).wait_for_publish(10)
        wait_until(lambda: "kairo-sidecar/request/stats" in sidecar.topics(), message="the request")
    finally:
        for c in (sidecar, device, app):
            c.close()
