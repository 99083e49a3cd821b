"""deploy/: the systemd unit (verified by systemd-analyze where it exists), the Mosquitto
drop-in with its ACL, run by a real mosquitto, install.sh / uninstall.sh run into a staging
root, and the Node-RED example flow, its requests sent to a real sidecar."""

from __future__ import annotations

import copy
import json
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sidecar.api.protocol import OPS, CancelRequest, ReplayRequest, RequestMessage, decode_request
from sidecar.config import WriterConfig
from sidecar.core import topics
from tests.conftest import ROOT, count_rows, wait_until
from tests.support.broker import Broker, free_port, mqtt_ready
from tests.support.publisher import event_id, event_messages, publish_all

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
    assert set(one("RestartPreventExitStatus").split()) == {"2", "3", "4", "6", "9"}


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


def start_mosquitto(tmp_path: Path, dropin: str) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto started like Debian's: a main file that includes conf.d/ with ``dropin`` beside
    a test listener on a free loopback port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("mosquitto not installed")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
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
        log = tmp_path / "mosquitto.log"
        assert proc.poll() is None, \
            f"mosquitto refused the drop-in:\n{log.read_text() if log.exists() else ''}"
    except BaseException:
        proc.terminate()
        proc.wait(10)
        raise
    return proc, port


@pytest.fixture
def dropin_broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto with our drop-in (password and ACL paths pointed into tmp_path)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto (with mosquitto_passwd) not installed")
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                       capture_output=True, timeout=30)
    shutil.copy(DEPLOY / "mosquitto.acl", tmp_path / "kairo.acl")
    dropin = (DEPLOY / "mosquitto.conf").read_text()
    dropin = dropin.replace("/etc/mosquitto/passwd", str(passwd))
    dropin = dropin.replace("/etc/mosquitto/kairo.acl", str(tmp_path / "kairo.acl"))
    proc, port = start_mosquitto(tmp_path, dropin)
    try:
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


# ------------------------------------------------------------------------------ install.sh
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"
SCRIPTS = (INSTALL, UNINSTALL, DEPLOY / "quickstart.sh")
INSTALLED = {  # what install.sh puts where (paths on the target machine)
    "venv": "/opt/kairo-sidecar", "binary": "/opt/kairo-sidecar/bin/kairo-sidecar",
    "config": "/etc/kairo-sidecar/sidecar.toml", "secrets": "/etc/kairo-sidecar/secrets.env",
    "state": "/var/lib/kairo-sidecar", "unit": "/etc/systemd/system/kairo-sidecar.service",
    "dropin": "/etc/mosquitto/conf.d/kairo.conf", "acl": "/etc/mosquitto/kairo.acl",
    "passwd": "/etc/mosquitto/passwd",
}
DB_URL = "sqlite:////var/lib/kairo-sidecar/kairo.db"


def run_script(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAIRO_SIDECAR_")}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


class Staged:
    """An install made by ``install.sh --root DIR --no-systemd`` into a temp directory."""

    def __init__(self, root: Path, output: str) -> None:
        self.root = root
        self.output = output

    def path(self, what: str) -> Path:
        return self.root / INSTALLED[what].lstrip("/")

    def secrets(self) -> dict[str, str]:
        lines = self.path("secrets").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _require_install_tools() -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed (install.sh sets a broker password with it)")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    """One staged install per module (a venv and a pip install take a while); no system user,
    no systemd, nothing outside the temp directory."""
    _require_install_tools()
    root = tmp_path_factory.mktemp("stage") / "root"
    result = run_script(INSTALL, "--root", str(root), "--no-systemd")
    assert result.returncode == 0, result.stdout + result.stderr
    return Staged(root, result.stdout)


def test_scripts_parse_with_bash_n() -> None:
    """install.sh, uninstall.sh and quickstart.sh are valid bash."""
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_scripts_pass_shellcheck() -> None:
    """shellcheck finds nothing in the deploy scripts. Skipped where shellcheck is missing."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_explain_their_options_and_refuse_unknown_ones() -> None:
    """--help documents the testable options; an unknown option fails with a clear message
    before anything is installed."""
    for script, options in ((INSTALL, ("--root", "--no-systemd", "--no-broker", "--no-apt")),
                            (UNINSTALL, ("--root", "--no-systemd", "--no-broker", "--purge"))):
        shown = run_script(script, "--help", timeout=30)
        assert shown.returncode == 0 and all(o in shown.stdout for o in options), shown.stdout
        refused = run_script(script, "--frobnicate", timeout=30)
        assert refused.returncode != 0
        assert "unknown option: --frobnicate" in refused.stderr


def test_unit_names_the_paths_the_installer_uses() -> None:
    """The unit starts the installed venv's binary with the installed config and reads the
    installed secrets file; the installer refuses a unit that names other paths."""
    s = unit_settings()
    assert s["ExecStart"][-1] == f"{INSTALLED['binary']} run --config {INSTALLED['config']}"
    assert s["EnvironmentFile"][-1] == "-" + INSTALLED["secrets"]
    assert "/var/lib/" + s["StateDirectory"][-1] == INSTALLED["state"]
    text = INSTALL.read_text()
    for what in ("venv", "config", "secrets", "state", "dropin", "acl", "passwd"):
        assert INSTALLED[what].rsplit("/", 1)[-1] in text, what


def test_install_stages_the_documented_layout(staged: Staged) -> None:
    """The staged tree holds the venv, the config (database in /var/lib/kairo-sidecar), a
    root-only secrets file with the broker login, the unit and the broker files as shipped, a
    hashed password entry, and a migrated database."""
    assert (staged.path("binary")).is_file() and os.access(staged.path("binary"), os.X_OK)
    config = staged.path("config").read_text()
    assert f'url = "{DB_URL}"' in config
    assert staged.path("unit").read_text() == UNIT.read_text()
    assert staged.path("dropin").read_text() == (DEPLOY / "mosquitto.conf").read_text()
    assert staged.path("acl").read_text() == (DEPLOY / "mosquitto.acl").read_text()
    assert staged.path("secrets").stat().st_mode & 0o777 == 0o600
    secrets = staged.secrets()
    assert secrets["KAIRO_SIDECAR_MQTT__USERNAME"] == "kairo-sidecar"
    password = secrets["KAIRO_SIDECAR_MQTT__PASSWORD"]
    assert len(password) >= 16
    entries = dict(line.split(":", 1) for line in staged.path("passwd").read_text().splitlines())
    assert entries["kairo-sidecar"].startswith("$") and password not in entries["kairo-sidecar"]
    assert staged.path("passwd").stat().st_mode & 0o007 == 0  # not world-readable
    con = sqlite3.connect(staged.path("state") / "kairo.db")
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert "events" in tables
    assert "--no-systemd" in staged.output and "systemctl" in staged.output


def test_installed_venv_validates_the_installed_config(staged: Staged) -> None:
    """`kairo-sidecar config --config <installed toml>` from the installed venv accepts the file
    and shows the database the installer set."""
    result = subprocess.run([str(staged.path("binary")), "config", "--config", str(staged.path("config"))],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["database"]["url"] == DB_URL
    assert effective["mqtt"]["host"] == "127.0.0.1"


def retained(port: int, topic: str, user: str, password: str) -> bytes | None:
    """The retained message on ``topic`` (None if there is none within a few seconds)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-retained-{uuid.uuid4().hex[:6]}")
    client.username_pw_set(user, password)
    client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: got.append(msg.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK"
        try:
            wait_until(lambda: got, timeout=3, message=f"a retained message on {topic}")
        except AssertionError:
            return None
        return got[-1]
    finally:
        client.disconnect()
        client.loop_stop()


def test_installed_sidecar_logs_in_to_the_installed_broker(staged: Staged, tmp_path: Path) -> None:
    """A Mosquitto running the installed drop-in, ACL and password file accepts the installed
    sidecar (its binary, config and secrets): it comes online on kairo-sidecar/state."""
    dropin = staged.path("dropin").read_text()
    for what in ("passwd", "acl"):
        dropin = dropin.replace(INSTALLED[what], str(staged.path(what)))
    broker, port = start_mosquitto(tmp_path, dropin)
    secrets = staged.secrets()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **secrets,
           "KAIRO_SIDECAR_MQTT__PORT": str(port), "KAIRO_SIDECAR_LOG__FORMAT": "json",
           "KAIRO_SIDECAR_MQTT__CLIENT_ID": f"kairo-sidecar-deploy-{uuid.uuid4().hex[:6]}",
           "KAIRO_SIDECAR_DATABASE__URL": f"sqlite:///{tmp_path / 'kairo.db'}"}
    log = tmp_path / "sidecar.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([str(staged.path("binary")), "run", "--config", str(staged.path("config"))],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until(lambda: daemon.poll() is not None or "sidecar_ready" in log.read_text(), timeout=30,
                   message="sidecar_ready")
        assert daemon.poll() is None, log.read_text()
        state = retained(port, "kairo-sidecar/state", "kairo-sidecar",
                         secrets["KAIRO_SIDECAR_MQTT__PASSWORD"])
        assert state == b"online"
    finally:
        daemon.terminate()
        daemon.wait(30)
        broker.terminate()
        broker.wait(10)


def test_install_twice_keeps_edits_data_and_password(staged: Staged) -> None:
    """Running install.sh again succeeds, keeps an edited config and ACL, the password (in the
    secrets file and the broker's file) and the database, and refreshes the venv and unit."""
    config, acl = staged.path("config"), staged.path("acl")
    config.write_text(config.read_text() + "# edited by the operator\n")
    acl.write_text(acl.read_text() + "# edited by the operator\n")
    db = staged.path("state") / "kairo.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE operator_marker (x)")
    con.commit()
    con.close()
    before = {what: staged.path(what).read_bytes() for what in ("config", "acl", "secrets", "passwd")}
    staged.path("unit").write_text("stale\n")

    again = run_script(INSTALL, "--root", str(staged.root), "--no-systemd")
    assert again.returncode == 0, again.stdout + again.stderr

    assert {what: staged.path(what).read_bytes() for what in before} == before
    assert "keeping the existing /etc/kairo-sidecar/sidecar.toml" in again.stdout
    assert staged.path("unit").read_text() == UNIT.read_text()
    con = sqlite3.connect(db)
    try:
        marker = "SELECT count(*) FROM sqlite_master WHERE name='operator_marker'"
        assert con.execute(marker).fetchone() == (1,)
    finally:
        con.close()


def _copy_of(staged: Staged, tmp_path: Path) -> Staged:
    """A copy of the staged tree, so uninstalling it leaves the module's install alone."""
    root = tmp_path / "root"
    shutil.copytree(staged.root, root, symlinks=True)
    return Staged(root, staged.output)


def test_uninstall_removes_the_install_and_keeps_data_and_config(staged: Staged, tmp_path: Path) -> None:
    """uninstall.sh removes the venv, the unit and the drop-in; the database, the config, the
    secrets, the ACL and the broker password stay; a second run is a no-op that succeeds."""
    copy = _copy_of(staged, tmp_path)
    result = run_script(UNINSTALL, "--root", str(copy.root), "--no-systemd")
    assert result.returncode == 0, result.stdout + result.stderr
    for what in ("venv", "unit", "dropin"):
        assert not copy.path(what).exists(), what
    for what in ("config", "secrets", "acl", "passwd"):
        assert copy.path(what).is_file(), what
    assert (copy.path("state") / "kairo.db").is_file()
    assert "kairo-sidecar:" in copy.path("passwd").read_text()
    again = run_script(UNINSTALL, "--root", str(copy.root), "--no-systemd")
    assert again.returncode == 0, again.stdout + again.stderr


def test_uninstall_purge_removes_data_config_and_the_broker_login(staged: Staged, tmp_path: Path) -> None:
    """uninstall.sh --purge also deletes the database, /etc/kairo-sidecar, the ACL and the
    sidecar's entry in the broker's password file, keeping the other users there."""
    copy = _copy_of(staged, tmp_path)
    with copy.path("passwd").open("a") as fh:
        fh.write("device:$7$101$someonesElsesHash\n")
    result = run_script(UNINSTALL, "--root", str(copy.root), "--no-systemd", "--purge")
    assert result.returncode == 0, result.stdout + result.stderr
    for what in ("venv", "unit", "dropin", "acl", "config", "secrets", "state"):
        assert not copy.path(what).exists(), what
    assert not (copy.root / "etc/kairo-sidecar").exists()
    assert copy.path("passwd").read_text() == "device:$7$101$someonesElsesHash\n"


def test_uninstall_refuses_to_delete_a_prefix_that_is_not_a_venv(tmp_path: Path) -> None:
    """A /opt/kairo-sidecar without pyvenv.cfg is not ours: uninstall stops and deletes nothing."""
    prefix = tmp_path / "root" / "opt" / "kairo-sidecar"
    prefix.mkdir(parents=True)
    (prefix / "precious.txt").write_text("mine")
    result = run_script(UNINSTALL, "--root", str(tmp_path / "root"), "--no-systemd")
    assert result.returncode != 0 and "not a venv" in result.stderr
    assert (prefix / "precious.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ Node-RED flow
FLOW = DEPLOY / "node-red-flow.json"
FLOW_NODE_TYPES = {"tab", "mqtt-broker", "comment", "inject", "mqtt out", "mqtt in", "debug",
                   "switch", "change"}
CONFIG_NODE_TYPES = {"tab", "mqtt-broker"}
STREAM_PLACEHOLDER = "0123456789abcdef0123456789abcdef"


def flow_nodes() -> dict[str, dict[str, Any]]:
    nodes = json.loads(FLOW.read_text())
    assert isinstance(nodes, list)
    by_id = {node["id"]: node for node in nodes}
    assert len(by_id) == len(nodes), "duplicate node ids"
    return by_id


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    if value is None:  # Node-RED sets undefined; JSON.stringify then leaves the key out
        obj.pop(last, None)
    else:
        obj[last] = value


class FlowRunner:
    """Runs the node types of the example flow the way Node-RED does (an inject's JSON payload,
    change rules between msg and flow context, a has-key switch, mqtt out as JSON, mqtt in with
    its datatype, debug), with ``publish`` as its broker connection."""

    def __init__(self, nodes: dict[str, dict[str, Any]],
                 publish: Callable[[str, bytes], None]) -> None:
        self.nodes = nodes
        self.publish = publish
        self.context: dict[str, Any] = {}
        self.debug: dict[str, list[Any]] = {i: [] for i, n in nodes.items() if n["type"] == "debug"}
        self.sent: list[tuple[str, bytes]] = []

    def click(self, inject_id: str) -> None:
        node = self.nodes[inject_id]
        assert node["type"] == "inject" and node["payloadType"] == "json"
        self._forward(node, {"payload": json.loads(node["payload"])})

    def subscriptions(self) -> list[str]:
        return [n["topic"] for n in self.nodes.values() if n["type"] == "mqtt in"]

    def receive(self, topic: str, payload: bytes) -> None:
        for node in self.nodes.values():
            if node["type"] == "mqtt in" and topics.matches(node["topic"], topic):
                value = json.loads(payload) if node["datatype"] == "json" else payload.decode()
                self._forward(node, {"topic": topic, "payload": value})

    def _forward(self, node: dict[str, Any], msg: dict[str, Any]) -> None:
        for output in node["wires"]:
            for target in output:
                self._run(self.nodes[target], copy.deepcopy(msg))

    def _run(self, node: dict[str, Any], msg: dict[str, Any]) -> None:
        kind = node["type"]
        if kind == "mqtt out":
            body = json.dumps(msg["payload"]).encode()
            self.sent.append((node["topic"], body))
            self.publish(node["topic"], body)
        elif kind == "debug":
            self.debug[node["id"]].append(_get(msg, node["complete"]))
        elif kind == "switch":
            assert [r["t"] for r in node["rules"]] == ["hask"] and node["propertyType"] == "msg"
            value = _get(msg, node["property"])
            if isinstance(value, dict) and node["rules"][0]["v"] in value:
                self._forward(node, msg)
        elif kind == "change":
            for rule in node["rules"]:
                assert rule["t"] == "set"
                value = self.context.get(rule["to"]) if rule["tot"] == "flow" else _get(msg, rule["to"])
                if rule["pt"] == "flow":
                    self.context[rule["p"]] = value
                else:
                    _set(msg, rule["p"], value)
            self._forward(node, msg)
        else:
            raise AssertionError(f"the test cannot run a {kind!r} node")


def test_node_red_flow_is_wired_to_existing_nodes() -> None:
    """The flow is a Node-RED export: one tab, every wire and broker reference points at an
    existing node, the broker node is 127.0.0.1:1883, requests go out at QoS 1, not retained,
    and it explains itself in comments."""
    nodes = flow_nodes()
    tabs = [n for n in nodes.values() if n["type"] == "tab"]
    brokers = [n for n in nodes.values() if n["type"] == "mqtt-broker"]
    assert len(tabs) == 1 and len(brokers) == 1
    assert (brokers[0]["broker"], str(brokers[0]["port"])) == ("127.0.0.1", "1883")
    for node in nodes.values():
        assert node["type"] in FLOW_NODE_TYPES, node["type"]
        if node["type"] in CONFIG_NODE_TYPES:
            continue
        assert node["z"] == tabs[0]["id"], node["id"]
        for output in node["wires"]:
            for target in output:
                assert target in nodes and nodes[target]["type"] not in CONFIG_NODE_TYPES, target
        if node["type"].startswith("mqtt "):
            assert node["broker"] == brokers[0]["id"]
            assert node["qos"] == "1"
        if node["type"] == "mqtt out":
            assert node["retain"] == "false"  # a retained request is dropped by the sidecar
    assert sum(n["type"] == "comment" for n in nodes.values()) >= 2


def test_node_red_flow_sends_requests_the_api_accepts() -> None:
    """Every request the flow sends goes to kairo-sidecar/request/<op>, decodes with the
    sidecar's own request decoder, and asks for its answer on a topic the flow subscribes to,
    under kairo-sidecar/response/<the broker node's client id>/ (what the ACL lets it read)."""
    nodes = flow_nodes()
    runner = FlowRunner(nodes, lambda topic, body: None)
    runner.context["kairo_replay_stream"] = STREAM_PLACEHOLDER
    for node in nodes.values():
        if node["type"] == "inject":
            runner.click(node["id"])
    client_id = next(n for n in nodes.values() if n["type"] == "mqtt-broker")["clientid"]
    decoded: dict[str, Any] = {}
    for topic, body in runner.sent:
        assert topic.startswith("kairo-sidecar/request/"), topic
        op = topic.removeprefix("kairo-sidecar/request/")
        assert op in OPS, op
        request = decode_request(RequestMessage(op, body))
        assert request.reply_to is not None
        assert request.reply_to.startswith(f"kairo-sidecar/response/{client_id}/")
        assert any(topics.matches(f, request.reply_to) for f in runner.subscriptions())
        decoded[op] = request
    assert set(decoded) == {"query", "replay", "replay/cancel"}
    assert isinstance(decoded["replay"], ReplayRequest) and decoded["replay"].live
    assert isinstance(decoded["replay/cancel"], CancelRequest)
    assert decoded["replay/cancel"].stream == STREAM_PLACEHOLDER
    assert "kairo-sidecar/state" in runner.subscriptions()


def test_node_red_flow_against_a_running_sidecar(broker: Broker, sidecar_factory: Any) -> None:
    """Clicking the flow's injects against a real sidecar: the state shows online, the query
    answers the newest events, the live replay streams them and catches up, and the cancel
    (with the stream id the flow remembered) ends it with reason "cancelled"."""
    sidecar = sidecar_factory(broker).start()
    accepted = publish_all(broker.host, broker.port, event_messages(5, prefix="nodered"))
    assert len(accepted) == 5
    wait_until(lambda: count_rows(sidecar.db_path) == 5, message="5 stored events")

    nodes = flow_nodes()
    client_id = next(n for n in nodes.values() if n["type"] == "mqtt-broker")["clientid"]
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv311)  # the broker node's protocolVersion "4"
    client.on_message = lambda c, u, msg: inbox.put((msg.topic, msg.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    runner = FlowRunner(nodes, lambda topic, body: client.publish(topic, body, qos=1).wait_for_publish(10))
    client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in runner.subscriptions()])
    client.connect(broker.host, broker.port)
    client.loop_start()

    def pump(done: Callable[[], object], message: str) -> None:
        def step() -> object:
            while True:
                try:
                    runner.receive(*inbox.get_nowait())
                except queue.Empty:
                    return done()
        wait_until(step, timeout=20, message=message)

    try:
        assert subscribed.wait(10)
        pump(lambda: "online" in runner.debug["kairo_state_debug"], "online on kairo-sidecar/state")

        runner.click("kairo_query_inject")
        pump(lambda: runner.debug["kairo_query_debug"], "the query answer")
        answer = runner.debug["kairo_query_debug"][0]
        assert answer["status"] == "ok" and answer["transaction"] == "node-red-query"
        newest_first = [event_id(i, "nodered") for i in (4, 3, 2, 1, 0)]
        assert [e["id"] for e in answer["data"]["events"]] == newest_first

        replay = runner.debug["kairo_replay_debug"]
        runner.click("kairo_replay_inject")
        pump(lambda: any(m.get("caught_up") for m in replay), "the replay to catch up")
        assert all(m["status"] == "ok" for m in replay)
        streamed = [e["id"] for m in replay for e in m.get("events", [])]
        assert streamed == [event_id(i, "nodered") for i in range(5)]
        stream = replay[0]["stream"]
        assert runner.context["kairo_replay_stream"] == stream

        runner.click("kairo_cancel_inject")
        pump(lambda: runner.debug["kairo_cancel_debug"] and any(m.get("done") for m in replay),
             "the cancel answer and the end of the stream")
        cancelled = runner.debug["kairo_cancel_debug"][0]
        assert cancelled["status"] == "ok", cancelled
        assert cancelled["data"] == {"stream": stream, "cancelled": True}
        done = next(m for m in replay if m.get("done"))
        assert done["reason"] == "cancelled" and done["count"] == 5
    finally:
        client.disconnect()
        client.loop_stop()
