"""A small threaded HTTP server (stdlib ``http.server``) over a table of routes.

Every route is a function of the request to a ``Response``; it reads counters or a reader
connection, never the writer. With ``[http] token`` every request needs
``Authorization: Bearer <token>`` (a ``401`` otherwise); a bind that is not loopback cannot
start without one (checked by ``sidecar.config``)."""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import msgspec

from sidecar.config import HttpConfig
from sidecar.logs import get_logger

log = get_logger("sidecar.http")

MAX_QUERY_BYTES = 4096  # a longer query string is refused (414)
MAX_QUERY_FIELDS = 32  # more query parameters are refused (400)
REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its request


class Request(NamedTuple):
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[Request], Response]


def json_response(status: int, body: Any) -> Response:
    return Response(status, "application/json", msgspec.json.encode(body) + b"\n")


def _error(status: HTTPStatus, message: str, *headers: tuple[str, str]) -> Response:
    return Response(status.value, "application/json",
                    msgspec.json.encode({"error": status.phrase.lower(), "message": message}) + b"\n",
                    tuple(headers))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    routes: Mapping[str, Route]
    token: bytes | None


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "kairo-sidecar"
    sys_version = ""

    def do_GET(self) -> None:
        self._send(self._answer(), body=True)

    def do_HEAD(self) -> None:
        self._send(self._answer(), body=False)

    def _answer(self) -> Response:
        parts = urlsplit(self.path)
        if len(parts.query) > MAX_QUERY_BYTES:
            return _error(HTTPStatus.REQUEST_URI_TOO_LONG,
                          f"query string over {MAX_QUERY_BYTES} bytes")
        if not self._authorized():
            return _error(HTTPStatus.UNAUTHORIZED, "this listener needs its token: "
                          "Authorization: Bearer <[http] token>", ("WWW-Authenticate", "Bearer"))
        route = self.server.routes.get(parts.path)
        if route is None:
            return _error(HTTPStatus.NOT_FOUND, "no such page; try /metrics or /healthz")
        try:
            query = parse_qs(parts.query, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            return _error(HTTPStatus.BAD_REQUEST, f"more than {MAX_QUERY_FIELDS} query parameters")
        request = Request(parts.path, query, {k.lower(): v for k, v in self.headers.items()})
        try:
            return route(request)
        except Exception as exc:  # a bug or an unreadable figure: an answer, never a crash
            log.exception("http_route_failed", path=parts.path)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)

    def _send(self, response: Response, *, body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (bad request line, 414, 501): our JSON, no HTML."""
        status = HTTPStatus(code)
        self._send(_error(status, message or status.phrase), body=self.command != "HEAD")
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", client=self.client_address[0], line=format % args)


class HttpServer:
    """The listener on ``[http] listen``, serving ``routes`` from its own threads."""

    def __init__(self, config: HttpConfig, routes: Mapping[str, Route]) -> None:
        address = config.address
        if address is None:
            raise ValueError("http.listen is empty: the listener is off")
        host, port = address
        self._server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        self._server.routes = dict(routes)
        self._server.token = config.token.encode() if config.token else None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="kairo-http",
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        log.info("http_listening", host=host, port=port, token=self._server.token is not None,
                 routes=sorted(self._server.routes))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
