"""Why a connection to the broker failed, in our own words: the client's error and the
daemon's ``mqtt_connect_failed`` / ``mqtt_connect_refused`` log events carry a reason."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.broker import connfail
from sidecar.client import SidecarClient
from sidecar.errors import BrokerError
from tests.support.broker import Broker, free_port, start_broker


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto that only lets in the user ``ann`` with password ``secret``."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "ann", "secret"], check=True,
                   capture_output=True)
    passwords.chmod(0o600)
    b = start_broker(tmp_path / "broker", extra_conf=f"allow_anonymous false\n"
                                                     f"password_file {passwords}\n")
    try:
        yield b
    finally:
        b.close()


def connect_error(host: str, port: int, **kwargs: object) -> str:
    client = SidecarClient(host, port, timeout=10, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(BrokerError) as info:
        client.connect()
    return str(info.value)


def test_client_says_connection_refused() -> None:
    """Nothing listening on the port: `connection refused`."""
    port = free_port()
    assert connect_error("127.0.0.1", port) == (
        f"cannot connect to the broker at 127.0.0.1:{port}: {connfail.CONNECTION_REFUSED}")


def test_client_says_tls_handshake_failed(broker: Broker, tmp_path: Path) -> None:
    """TLS to a plain MQTT listener: `TLS handshake failed`."""
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    message = connect_error(broker.host, broker.port, tls_ca=str(ca))
    assert f": {connfail.TLS_FAILED}" in message


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_client_says_bad_user_name_or_password(password_broker: Broker, protocol: str) -> None:
    """A wrong password is `not authorised: bad user name or password` (MQTT 5 and 3.1.1)."""
    message = connect_error(password_broker.host, password_broker.port, protocol=protocol,
                            username="ann", password="wrong")
    assert message.endswith(connfail.BAD_CREDENTIALS) or message.endswith(connfail.NOT_AUTHORISED)
    assert "not authorised" in message


def test_reasons_for_name_and_timeout_failures() -> None:
    """A name that does not resolve and a timeout get their own words."""
    assert connfail.network_reason(socket.gaierror(-2, "x")) == connfail.HOST_NOT_RESOLVED
    assert connfail.network_reason(TimeoutError()) == connfail.TIMED_OUT
    assert connfail.network_reason(ConnectionRefusedError()) == connfail.CONNECTION_REFUSED
    assert connfail.refusal_reason(0x86) == connfail.BAD_CREDENTIALS
    assert connfail.refusal_reason(0x87) == connfail.NOT_AUTHORISED


def test_daemon_logs_why_it_cannot_connect(tmp_path: Path, broker: Broker,
                                           sidecar_factory) -> None:
    """The daemon's mqtt_connect_failed event has reason=`connection refused ...`."""
    proc = sidecar_factory(broker, mqtt__port=free_port()).start(wait_ready=False)
    proc.wait_log("mqtt_connect_failed", timeout=30)
    events = [json.loads(line) for line in proc.log_text().splitlines()
              if line.startswith("{") and "mqtt_connect_failed" in line]
    assert events[0]["reason"] == connfail.CONNECTION_REFUSED
    assert events[0]["port"] != broker.port


def test_daemon_logs_bad_credentials(tmp_path: Path, password_broker: Broker,
                                     sidecar_factory) -> None:
    """A refused CONNECT is logged as mqtt_connect_refused with the reason in our words."""
    proc = sidecar_factory(password_broker, mqtt__username="ann",
                           mqtt__password="wrong").start(wait_ready=False)
    proc.wait_log("mqtt_connect_refused", timeout=30)
    line = next(json.loads(text) for text in proc.log_text().splitlines()
                if text.startswith("{") and "mqtt_connect_refused" in text)
    assert line["reason"] in (connfail.BAD_CREDENTIALS, connfail.NOT_AUTHORISED)
