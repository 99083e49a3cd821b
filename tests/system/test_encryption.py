"""The daemon on an encrypted database (SQLCipher) with a real Mosquitto: ingest, queries over
MQTT, SIGKILL and restart with nothing lost, and no payload byte in plain text on disk."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.client import SidecarClient
from sidecar.storage import cipher
from sidecar.storage.encryption import keygen
from tests.conftest import SidecarProcess, wait_until
from tests.support.broker import Broker
from tests.support.publisher import Message, publish_all

pytestmark = pytest.mark.skipif(not cipher.available(),
                                reason="SQLCipher is not installed (kairo-sidecar[encryption])")

MARKER = "PLAINTEXT-MARKER-7f3a"


def messages(start: int, n: int) -> list[Message]:
    return [Message(f"enc-{i:05d}", f"kairo/test/{i % 5}", json.dumps({
        "id": f"enc-{i:05d}", "type": "kairo.test.secret", "source": "test",
        "payload": {"note": f"{MARKER}-{i}", "i": i}}).encode()) for i in range(start, start + n)]


def stored_ids(db: Path, key: cipher.DatabaseKey) -> set[str]:
    con = cipher.connect(db, key=key)
    try:
        return {r[0] for r in con.execute("SELECT id FROM events WHERE id LIKE 'enc-%'")}
    except cipher.DATABASE_ERRORS:
        return set()  # not migrated yet
    finally:
        con.close()


def assert_no_plaintext(db: Path) -> None:
    for f in (db, Path(f"{db}-wal")):
        if f.exists():
            assert MARKER.encode() not in f.read_bytes(), f"plaintext payload in {f}"


def test_daemon_on_an_encrypted_file(tmp_path: Path, broker: Broker,
                                     sidecar_factory: Callable[..., SidecarProcess]) -> None:
    """With [database] key_file, the daemon creates an encrypted file, stores and answers
    queries over MQTT; decrypt runs beside it and rekey is refused; after SIGKILL and a
    restart every accepted event is stored exactly once; neither the file nor its WAL holds
    the payloads' text; the log never shows the key."""
    key_path = tmp_path / "db.key"
    keygen(key_path)
    key = cipher.read_key_file(key_path)
    sidecar = sidecar_factory(broker, DATABASE__KEY_FILE=str(key_path)).start()
    db = sidecar.db_path
    assert '"encrypted": true' in sidecar.log_text()
    accepted = publish_all(broker.host, broker.port, messages(0, 300))
    wait_until(lambda: stored_ids(db, key) >= accepted, timeout=30)
    assert_no_plaintext(db)
    assert not db.read_bytes().startswith(cipher.SQLITE_HEADER)

    client = SidecarClient(broker.host, broker.port).connect()
    try:
        assert client.get("enc-00007")["payload"]["note"] == f"{MARKER}-7"
        page = client.query(type="kairo.test.secret", limit=50)
        assert len(page.events) == 50
    finally:
        client.close()

    # beside the running daemon: decrypt copies a snapshot; rekey refuses (exit 7)
    done = subprocess.run([sys.executable, "-m", "sidecar", "decrypt", str(db), str(tmp_path / "copy.db"),
                           "--key-file", str(key_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(tmp_path / "copy.db") as plain:
        assert plain.execute("SELECT count(*) FROM events WHERE id LIKE 'enc-%'").fetchone()[0] >= 300
    keygen(tmp_path / "new.key")
    refused = subprocess.run([sys.executable, "-m", "sidecar", "rekey", "--db", str(db), "--key-file",
                              str(key_path), "--new-key-file", str(tmp_path / "new.key")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 7 and "open in another process" in refused.stderr

    accepted |= publish_all(broker.host, broker.port, messages(300, 200))
    sidecar.kill()  # SIGKILL: whatever was acked must be in the file
    accepted |= publish_all(broker.host, broker.port, messages(500, 100))  # queued by the broker
    sidecar.start()
    wait_until(lambda: stored_ids(db, key) >= accepted, timeout=30)
    con = cipher.connect(db, key=key)
    try:
        rows = con.execute("SELECT count(*), count(DISTINCT id) FROM events "
                           "WHERE id LIKE 'enc-%'").fetchone()
    finally:
        con.close()
    assert rows[0] == rows[1] == len(stored_ids(db, key)) and stored_ids(db, key) >= accepted
    assert_no_plaintext(db)
    assert sidecar.terminate() == 0
    assert_no_plaintext(db)
    assert key.hex not in sidecar.log_text()


def test_daemon_without_the_key_exits_9_and_with_the_env_key_starts(
        tmp_path: Path, broker: Broker, sidecar_factory: Callable[..., SidecarProcess]) -> None:
    """The daemon pointed at an encrypted file without a key exits 9 and leaves it byte for
    byte; given the key through KAIRO_SIDECAR_DATABASE__KEY it starts and stores."""
    key_path = tmp_path / "db.key"
    keygen(key_path)
    key = cipher.read_key_file(key_path)
    first = sidecar_factory(broker, DATABASE__KEY_FILE=str(key_path)).start()
    assert first.terminate() == 0
    before = first.db_path.read_bytes()
    keyless = sidecar_factory(broker).start(wait_ready=False)
    assert keyless.proc is not None and keyless.proc.wait(30) == 9
    assert "looks encrypted" in keyless.log_text()
    assert first.db_path.read_bytes() == before
    with_env = sidecar_factory(broker, DATABASE__KEY=key.hex).start()
    accepted = publish_all(broker.host, broker.port, messages(0, 20))
    wait_until(lambda: stored_ids(first.db_path, key) >= accepted, timeout=30)
    assert with_env.terminate() == 0
    assert key.hex not in with_env.log_text()
