"""A real daemon (in-process ``Sidecar.run``) with ``[http]`` and a token, on a real Mosquitto
and SQLite file, seeded with events of several types, a hostile (XSS) event and dead letters:
what the web console tests read, over plain HTTP and in a browser."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import count_rows, wait_until
from tests.support.broker import Broker, start_broker
from tests.support.publisher import Message, encode, event_messages, make_event, publish_all
from tests.system.test_observability import Running, env_for, free_port

TOKEN = "console-token-for-tests-0123"
XSS_ID = "xss-000001"
XSS_TEXT = "<img src=x onerror=\"document.title='pwned'\"></td><script>document.title='pwned'</script>"
SEEDED = 42  # events stored by ``seed``: 30 test, 10 door, 1 XSS, 1 correlated
DOORS = 10


def xss_event() -> dict[str, Any]:
    return {"id": XSS_ID, "type": "kairo.test.xss", "source": "<b>hostile</b>",
            "payload": {"html": XSS_TEXT}, "metadata": {"correlationId": "<i>corr</i>"}}


def door_messages(n: int) -> list[Message]:
    out = []
    for i in range(n):
        event = dict(make_event(i, prefix="door"), type="kairo.door.opened", source="door-sensor")
        out.append(Message(event["id"], f"kairo/door/{i % 2}", encode(event)))
    return out


@dataclass
class Site:
    """The seeded daemon: ``base`` is its ``http://127.0.0.1:port``."""

    broker: Broker
    run: Running
    db: Path

    @property
    def base(self) -> str:
        return self.run.base

    def get(self, path: str, params: dict[str, Any] | None = None, *, token: str | None = TOKEN,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        request = urllib.request.Request(url, headers=headers or {})
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers.items()), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        status, _, body = self.get(path, params)
        assert status == 200, (status, body)
        return json.loads(body)

    def publish(self, messages: list[Message]) -> None:
        publish_all(self.broker.host, self.broker.port, messages)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.db)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


def seed(site: Site) -> None:
    site.publish(event_messages(30, prefix="con"))
    site.publish(door_messages(DOORS))
    site.publish([Message(XSS_ID, "kairo/test/xss", encode(xss_event())),
                  Message("corr", "kairo/test/corr", encode(dict(
                      make_event(0, prefix="corr"),
                      metadata={"correlationId": "order-77"})))])
    site.publish([Message("bad-1", "kairo/test/bad", b"not json <script>document.title='pwned'"
                          b"</script>"),
                  Message("bad-2", "kairo/test/bad", b"\xff\xfe not utf-8")])
    wait_until(lambda: count_rows(site.db) == SEEDED and count_rows(site.db, "dead_letters") == 2,
               timeout=30, message=f"{SEEDED} events and 2 dead letters")


@contextmanager
def seeded_site(tmp_path: Path, **overrides: str) -> Iterator[Site]:
    broker = start_broker(tmp_path / "broker")
    try:
        env = env_for(tmp_path, broker, http__listen=f"127.0.0.1:{free_port()}",
                      http__token=TOKEN, **overrides)
        run = Running(env).start()
        try:
            site = Site(broker, run, tmp_path / "kairo.db")
            seed(site)
            yield site
        finally:
            run.stop()
    finally:
        broker.close()
