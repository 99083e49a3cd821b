"""A real PostgreSQL for the tests: Debian's server binaries, or testcontainers' image.

``start_postgres`` runs ``initdb`` on a temp data dir and ``pg_ctl start`` on a free loopback
port (unix socket in the temp dir, trust auth on 127.0.0.1), as the ``postgres`` user when the
tests run as root (the server refuses to run as root). With ``KAIRO_TEST_DB=docker`` it starts
testcontainers' PostgreSQL instead. ``Postgres.fresh_database()`` is a new empty database per
test (``CREATE DATABASE`` from ``template0``: a few milliseconds), so one server serves the
whole session.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_USER = "postgres"  # Debian's package creates it


class PostgresUnavailable(Exception):
    """Neither the server binaries nor docker are usable here (the tests skip, saying why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise PostgresUnavailable("no initdb (install Debian's postgresql package)")
        return Path(on_path).parent
    return Path(found[-1]).parent


@dataclass
class Postgres:
    """One running server; ``url`` of the admin database, ``stop()`` ends it."""

    host: str
    port: int
    user: str
    password: str | None = None
    admin_db: str = "postgres"
    _stop: Any = None
    _restart: Any = None
    _halt: Any = None
    _resume: Any = None
    _names: itertools.count = field(default_factory=itertools.count)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes back on the
        same port (local servers only)."""
        if self._restart is None:
            raise PostgresUnavailable("this server cannot be restarted (docker)")
        self._restart()

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (``pg_ctl stop -m fast``: every connection cut, connecting
        refused) until the block ends, then started again on the same port (local only)."""
        if self._halt is None:
            raise PostgresUnavailable("this server cannot be stopped and started (docker)")
        self._halt()
        try:
            yield
        finally:
            self._resume()

    def url(self, database: str) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        """Run ``sql`` on the admin database, outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg2

        con = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password, dbname=self.admin_db)
        con.autocommit = True
        try:
            with con.cursor() as cur:
                cur.execute(sql)
        finally:
            con.close()

    def fresh_database(self, *, icu_locale: str | None = None) -> str:
        """A new empty database; its URL. ``icu_locale`` (e.g. ``"en-US"``) makes a language's
        ICU collation the database default, as on most servers (the test server's is C)."""
        name = f"kairo_test_{os.getpid()}_{next(self._names)}"
        locale = "" if icu_locale is None else \
            f" LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}' LOCALE 'C'"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0{locale}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(f"running as root and there is no {SERVER_USER!r} user") from None
    return ["runuser", "-u", SERVER_USER, "--", *cmd]


def start_local(base: Path | None = None) -> Postgres:
    """``initdb`` + ``pg_ctl start`` on a free loopback port in a temp dir."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="kairo-pg-", dir=base))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER) if _has_user(SERVER_USER) else None
        if entry is None:
            raise PostgresUnavailable(f"running as root and there is no {SERVER_USER!r} user")
        os.chmod(root, 0o755)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(sockets, entry.pw_uid, entry.pw_gid)
    user = SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    run = {"check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", user,
                                        "--auth=trust", "-E", "UTF8", "--no-sync",
                                        "--locale=C"]), **run)  # type: ignore[call-overload]
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        output = getattr(exc, "stdout", b"") or b""
        raise PostgresUnavailable(f"initdb failed: {exc} {output.decode(errors='replace')[-500:]}") \
            from None
    port = _free_port()
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockets} "
               "-c fsync=off -c full_page_writes=off -c max_connections=200 "
               "-c shared_buffers=32MB")
    log = root / "server.log"
    try:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                        "-o", options, "-w", "-t", "60", "start"]),
                       **run)  # type: ignore[call-overload]
    except (subprocess.CalledProcessError, OSError) as exc:
        text = log.read_text(errors="replace")[-1000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"pg_ctl start failed: {exc} {text}") from None

    def stop() -> None:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                        "-w", "stop"]), check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)

    def restart() -> None:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                        "-o", options, "-m", "fast", "-w", "-t", "60",
                                        "restart"]), **run)  # type: ignore[call-overload]

    def halt() -> None:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                        "-w", "-t", "60", "stop"]),
                       **run)  # type: ignore[call-overload]

    def resume() -> None:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                        "-o", options, "-w", "-t", "60", "start"]),
                       **run)  # type: ignore[call-overload]

    return Postgres(host="127.0.0.1", port=port, user=user, _stop=stop, _restart=restart,
                    _halt=halt, _resume=resume)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def start_docker() -> Postgres:
    """testcontainers' PostgreSQL (``KAIRO_TEST_DB=docker``)."""
    try:
        from testcontainers.postgres import PostgresContainer
        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
    except Exception as exc:  # docker missing, daemon down, image not pullable
        raise PostgresUnavailable(f"testcontainers could not start PostgreSQL: {exc!r}") from None
    return Postgres(host=container.get_container_host_ip(),
                    port=int(container.get_exposed_port(5432)), user=container.username,
                    password=container.password, admin_db=container.dbname,
                    _stop=container.stop)


def start_postgres(base: Path | None = None) -> Postgres:
    """The server the environment asks for: docker when ``KAIRO_TEST_DB=docker``, else local."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg2 is not installed (pip install -e '.[postgres]')") \
            from None
    if os.environ.get("KAIRO_TEST_DB") == "docker":
        return start_docker()
    return start_local(base)
