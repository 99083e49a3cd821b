"""The daemon on a thread of the bench's own process, over a Mosquitto of its own: what the
request and HTTP latency benches (``api_latency``, ``console_cost``, ``metrics_cost``,
``search latency``) measure against."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sidecar.app import Sidecar
from sidecar.config import load_config
from tests.support.broker import Broker, start_broker


@contextmanager
def sidecar_thread(broker_dir: Path, env: dict[str, str], *, extra_conf: str = "",
                   ready_timeout: float = 60) -> Iterator[tuple[Broker, Sidecar]]:
    """A broker in ``broker_dir`` (``extra_conf`` added to its configuration) and the daemon on it,
    configured by ``env`` (``KAIRO_SIDECAR_*``; the broker's host and port are added to it), ready
    within ``ready_timeout`` s; on exit the daemon stops (its thread joined, 30 s at most), then
    the broker."""
    broker = start_broker(broker_dir, extra_conf=extra_conf)
    try:
        env.update({"KAIRO_SIDECAR_MQTT__HOST": broker.host,
                    "KAIRO_SIDECAR_MQTT__PORT": str(broker.port)})
        sidecar = Sidecar(load_config(environ=env))
        ready = threading.Event()
        thread = threading.Thread(target=sidecar.run, daemon=True,
                                  kwargs={"install_signals": False, "on_ready": ready.set})
        thread.start()
        try:
            assert ready.wait(ready_timeout), "the sidecar did not become ready"
            yield broker, sidecar
        finally:
            sidecar.request_stop()
            thread.join(30)
    finally:
        broker.close()
