"""Who may use the listener when ``[http] token`` is set.

A program sends ``Authorization: Bearer <token>``. A browser cannot on its first load: it
sends the token once (the console's login form, ``POST /login``, or ``/?token=...`` in a
bookmark) and gets a cookie back (``HttpOnly``, ``SameSite=Strict``) that it sends from then
on. The cookie holds a keyed hash of the token, never the token itself; every comparison is
``hmac.compare_digest``. ``POST /logout`` clears it in that browser (the value is the same
for every login until the token changes: changing the token ends them all). The token is never
logged (``redact`` for request lines)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie

COOKIE = "kairo_console"
COOKIE_MAX_AGE = 30 * 24 * 3600  # seconds a browser keeps its login
_SESSION_CONTEXT = b"kairo-sidecar web console session v1"
_TOKEN_PARAM = re.compile(r"(?i)(token=)[^&\s]*")


def session_value(token: bytes) -> str:
    """What the cookie holds: an HMAC of a fixed context under the token (a leaked cookie
    does not reveal the token; a new token ends every login)."""
    return hmac.new(token, _SESSION_CONTEXT, hashlib.sha256).hexdigest()


def token_matches(given: str, token: bytes) -> bool:
    return hmac.compare_digest(given.strip().encode(), token)


def authorized(headers: Mapping[str, str], token: bytes | None) -> bool:
    """A request with the bearer token or the login cookie (or any, without a token)."""
    if token is None:
        return True
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token_matches(given, token):
        return True
    cookie = _cookie(headers.get("cookie"))
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def _cookie(header: str | None) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return None if morsel is None else morsel.value


def login_cookie(token: bytes) -> str:
    """The ``Set-Cookie`` value after a good token."""
    return (f"{COOKIE}={session_value(token)}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; "
            "SameSite=Strict")


def logout_cookie() -> str:
    """The ``Set-Cookie`` value that makes the browser forget its login (``/logout``)."""
    return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"


def redact(line: str) -> str:
    """A request line with any ``token=`` value blanked (for the debug log)."""
    return _TOKEN_PARAM.sub(r"\1<redacted>", line)
