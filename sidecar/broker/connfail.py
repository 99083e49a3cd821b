"""Why a connection to the broker failed, in our own words (for logs and error messages).

``network_reason`` reads the exception a connection attempt raised (refused, name not resolved,
TLS, timeout, ...); ``refusal_reason`` reads the code of a CONNACK that refused the session
(paho gives MQTT 3.1.1 refusals the MQTT 5 numbers, so one table serves both).
"""

from __future__ import annotations

import errno
import socket
import ssl

CONNECTION_REFUSED = "connection refused (nothing listens on that port)"
HOST_NOT_RESOLVED = "host name not resolved"
TLS_FAILED = "TLS handshake failed"
TIMED_OUT = "timed out"
BAD_CREDENTIALS = "not authorised: bad user name or password"
NOT_AUTHORISED = "not authorised"

_REFUSALS = {
    0x80: "refused by the broker (no reason given)",
    0x84: "refused: the broker does not speak this MQTT version",
    0x85: "refused: client id not accepted",
    0x86: BAD_CREDENTIALS,
    0x87: NOT_AUTHORISED,
    0x88: "refused: the broker is unavailable",
    0x89: "refused: the broker is busy",
    0x8A: "refused: this client is banned",
    0x8C: "refused: authentication method not supported",
    0x97: "refused: a quota was exceeded",
    0x9F: "refused: connecting too often",
}
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.EADDRNOTAVAIL}


def network_reason(exc: BaseException, *, tls: bool = False) -> str:
    """``ConnectionRefusedError`` -> ``"connection refused ..."``, and so on. With ``tls``, a
    connection closed while connecting is a failed handshake (a plain MQTT port does that)."""
    closed = ConnectionResetError | ConnectionAbortedError | BrokenPipeError
    if tls and isinstance(exc, closed):
        return f"{TLS_FAILED} (the broker closed the connection: is this port TLS?)"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
        return f"{TLS_FAILED} ({str(detail).lower().replace('_', ' ')})" if detail else TLS_FAILED
    if isinstance(exc, socket.gaierror):
        return HOST_NOT_RESOLVED
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, TimeoutError):
        return TIMED_OUT
    if isinstance(exc, closed):
        return "the broker closed the connection"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "network unreachable"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return f"network error ({errno.errorcode[exc.errno]})"
    return f"connection failed ({type(exc).__name__})"


def refusal_reason(code: int) -> str:
    """The reason code of a refusing CONNACK -> our words (``0x86`` -> bad user name ...)."""
    return _REFUSALS.get(code, f"refused by the broker (reason code {code})")
