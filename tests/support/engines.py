"""Fixtures that run a daemon suite on both engines (SQLite and PostgreSQL).

A module imports ``sidecar_factory`` (and ``outage``) from here: they override conftest's
factory with one that stores into an SQLite file or a fresh PostgreSQL database, so the
module's tests run on both, unchanged. A test marked ``sqlite_only(reason)`` or
``postgres_only(reason)`` is skipped on the other engine, saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENGINES, SidecarProcess, engine_database
from tests.support.broker import Broker
from tests.support.faultkit import exclusive_lock
from tests.support.postgres import Postgres

SidecarFactory = Callable[..., SidecarProcess]
Outage = Callable[[SidecarProcess], AbstractContextManager[Any]]


@pytest.fixture(params=ENGINES)
def sidecar_factory(request: pytest.FixtureRequest, sidecar_factory: SidecarFactory,
                    tmp_path: Path) -> Iterator[SidecarFactory]:
    """conftest's factory with ``[database] url`` an SQLite file or a fresh PostgreSQL database:
    every test of the module runs on both engines, unless marked for one (skipped, saying why)."""
    engine = request.param
    for name, other in (("sqlite_only", "postgres"), ("postgres_only", "sqlite")):
        marker = request.node.get_closest_marker(name)
        if marker is not None and engine == other:
            pytest.skip(f"{name}: {marker.args[0]}")
    for url in engine_database(request, engine, tmp_path):
        def make(broker: Broker, _url: str = url, **overrides: object) -> SidecarProcess:
            return sidecar_factory(broker, **{"database__url": _url, **overrides})
        yield make


@pytest.fixture
def outage(request: pytest.FixtureRequest) -> Outage:
    """A block during which the sidecar's writes fail: another process holding SQLite's write
    lock, or the PostgreSQL server stopped (every connection cut, new ones refused)."""
    def make(sidecar: SidecarProcess) -> AbstractContextManager[Any]:
        if sidecar.engine == "sqlite":
            return exclusive_lock(sidecar.db_path)
        server: Postgres = request.getfixturevalue("pg_server")
        if server._halt is None:
            pytest.skip("the PostgreSQL server cannot be stopped and started here (docker)")
        return server.down()
    return make
