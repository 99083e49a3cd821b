"""A small threaded HTTP server (stdlib ``http.server``) over a table of routes.

Every route is a function of the request to a ``Response``; it reads counters or a reader
connection, never the writer. With ``[http] token`` every request needs
``Authorization: Bearer <token>`` or the web console's login cookie (``sidecar.http.auth``; a
``401`` otherwise); a bind that is not loopback cannot start without one (checked by
``sidecar.config``). Every answer carries a strict Content-Security-Policy and ``nosniff``:
nothing a page shows (event payloads are anyone's input) can run as script."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import msgspec

from sidecar.config import HttpConfig
from sidecar.http import auth
from sidecar.logs import RateLimited, get_logger

log = get_logger("sidecar.http")
_refusals = RateLimited(period=10.0, burst=5)  # wrong tokens at the login: a guesser cannot flood

MAX_QUERY_BYTES = 4096  # a longer query string is refused (414)
MAX_QUERY_FIELDS = 32  # more query parameters are refused (400)
REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its request
MAX_LOGIN_BYTES = 1024  # the largest login form body read
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
HOME = "/"  # the console's page; the one path that takes ``?token=`` (then a cookie)

# On every answer: no inline script or style, nothing from elsewhere, never framed.
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
     "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
     "base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)


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
    login_page: bytes | None  # the console's login form (HTML), None without a console
    public: frozenset[str]  # paths answered without the token (the login form's stylesheet)


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

    def do_POST(self) -> None:
        if urlsplit(self.path).path == LOGOUT_PATH and self.server.login_page is not None:
            self._send(self._logout(), body=True)
        else:
            self._send(self._login(), body=True)

    def _answer(self) -> Response:
        parts = urlsplit(self.path)
        if len(parts.query) > MAX_QUERY_BYTES:
            return _error(HTTPStatus.REQUEST_URI_TOO_LONG,
                          f"query string over {MAX_QUERY_BYTES} bytes")
        if parts.path not in self.server.public and not self._authorized():
            if parts.path == HOME and self.server.login_page is not None:
                return self._token_in_query(parts.query)
            return _error(HTTPStatus.UNAUTHORIZED, "this listener needs its token: "
                          "Authorization: Bearer <[http] token>", ("WWW-Authenticate", "Bearer"))
        route = self.server.routes.get(parts.path)
        if route is None:
            return _error(HTTPStatus.NOT_FOUND, "no such page; try /, /metrics or /healthz")
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
        return auth.authorized({k.lower(): v for k, v in self.headers.items()}, self.server.token)

    def _login_form(self) -> Response:
        page = self.server.login_page or b""
        return Response(HTTPStatus.UNAUTHORIZED.value, "text/html; charset=utf-8", page)

    def _logged_in(self) -> Response:
        """Back to the console (the token out of the address bar), with the login cookie."""
        token = self.server.token
        assert token is not None
        return Response(HTTPStatus.SEE_OTHER.value, "text/plain; charset=utf-8", b"",
                        (("Location", HOME), ("Set-Cookie", auth.login_cookie(token))))

    def _logout(self) -> Response:
        """``POST /logout`` (the console's button): the cookie cleared, back to ``/`` (the login
        form when a token is set). Needs no token: it only ends this browser's login."""
        log.info("http_logout", client=self.client_address[0])
        self.close_connection = True  # a body, if any, is not read
        return Response(HTTPStatus.SEE_OTHER.value, "text/plain; charset=utf-8", b"",
                        (("Location", HOME), ("Set-Cookie", auth.logout_cookie())))

    def _token_in_query(self, query: str) -> Response:
        """``/?token=...``: a bookmark's way in; without it (or a wrong one) the login form."""
        token = self.server.token
        try:
            given = parse_qs(query, max_num_fields=MAX_QUERY_FIELDS).get("token", [])
        except ValueError:
            given = []
        if token is not None and len(given) == 1 and auth.token_matches(given[0], token):
            log.info("http_login", client=self.client_address[0], via="query")
            return self._logged_in()
        return self._login_form()

    def _login(self) -> Response:
        """``POST /login`` from the console's form (``token=...``, url-encoded)."""
        token = self.server.token
        if urlsplit(self.path).path != LOGIN_PATH or self.server.login_page is None:
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, "only the console's login and logout "
                          "take POST",
                          ("Allow", "GET, HEAD"))
        if token is None:
            return Response(HTTPStatus.SEE_OTHER.value, "text/plain; charset=utf-8", b"",
                            (("Location", HOME),))
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_LOGIN_BYTES:
            self.close_connection = True
            return _error(HTTPStatus.BAD_REQUEST, f"a login form of at most {MAX_LOGIN_BYTES} "
                          "bytes, with Content-Length")
        body = self.rfile.read(length).decode("utf-8", "replace")
        try:
            given = parse_qs(body, max_num_fields=4).get("token", [])
        except ValueError:
            given = []
        if len(given) == 1 and auth.token_matches(given[0], token):
            log.info("http_login", client=self.client_address[0], via="form")
            return self._logged_in()
        allowed, suppressed = _refusals.allow()
        if allowed:
            log.warning("http_login_refused", client=self.client_address[0], suppressed=suppressed)
        return self._login_form()

    def _send(self, response: Response, *, body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
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
        log.debug("http_request", client=self.client_address[0], line=auth.redact(format % args))


class HttpServer:
    """The listener on ``[http] listen``, serving ``routes`` from its own threads."""

    def __init__(self, config: HttpConfig, routes: Mapping[str, Route], *,
                 login_page: bytes | None = None, public: frozenset[str] = frozenset()) -> None:
        address = config.address
        if address is None:
            raise ValueError("http.listen is empty: the listener is off")
        host, port = address
        self._server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        self._server.routes = dict(routes)
        self._server.token = config.token.encode() if config.token else None
        self._server.login_page = login_page
        self._server.public = public
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
