"""Several sidecars starting at once on one PostgreSQL database: the migrations run once, under
an advisory lock, and every starter finds the schema complete."""

from __future__ import annotations

import threading

from sidecar.config import DatabaseConfig
from sidecar.storage.db import migration_state
from sidecar.storage.postgres import open_postgres
from sidecar.storage.startup import open_store
from tests.support.postgres import Postgres


def test_four_starters_migrate_a_fresh_database_once(pg_server: Postgres) -> None:
    """Four threads open the same fresh database with schema="migrate" at the same moment: none
    fails, each migration is recorded once, nothing is pending (without the lock two of them
    run 001 together and one fails on a table that already exists)."""
    url = pg_server.fresh_database()
    config = DatabaseConfig(url=url)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def starter() -> None:
        try:
            start.wait(10)
            open_store(config, schema="migrate", shared=True).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=starter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    db = open_postgres(config, read_only=True)
    try:
        done, pending = migration_state(db)
        assert pending == [] and len(done) == len(set(done)) and "001_initial" in done
    finally:
        db.close()
