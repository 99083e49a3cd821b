"""The daemon's clean-stop record: written at SIGTERM, never after SIGKILL, so ``auto`` skips
the start-up check only after a clean stop."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.storage import cleanstop
from tests.conftest import SidecarProcess, count_rows, wait_until
from tests.support.broker import Broker
from tests.support.publisher import event_messages, publish_all


def test_sigterm_records_a_clean_stop_and_sigkill_does_not(
        broker: Broker, sidecar_factory: Callable[..., SidecarProcess]) -> None:
    """SIGTERM leaves the record and the next start skips the check; that start removes it, so
    a SIGKILL leaves none and the start after it runs the check."""
    sidecar = sidecar_factory(broker).start()
    record = cleanstop.record_path(sidecar.db_path)
    publish_all(broker.host, broker.port, event_messages(20, prefix="cs"))
    wait_until(lambda: count_rows(sidecar.db_path) == 20, timeout=20, message="20 rows")
    assert sidecar.terminate() == 0
    assert record.exists()

    offset = len(sidecar.log_text())
    sidecar.start()
    log = sidecar.log_text()[offset:]
    assert '"integrity_check_skipped"' in log and '"integrity_checked"' not in log
    assert not record.exists()
    sidecar.kill()
    assert not record.exists()

    offset = len(sidecar.log_text())
    sidecar.start()
    log = sidecar.log_text()[offset:]
    assert '"reason": "no_clean_stop"' in log and '"integrity_checked"' in log
    assert sidecar.terminate() == 0
    assert count_rows(sidecar.db_path) == 20
