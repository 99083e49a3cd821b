"""``/healthz``: 200 with the health figures as JSON, 503 (same body) when unhealthy (the rule:
``sidecar.observe.health``)."""

from __future__ import annotations

from sidecar.http.server import Request, Response, Route, json_response
from sidecar.observe import health
from sidecar.observe.sources import Sources


def health_route(sources: Sources) -> Route:
    def route(request: Request) -> Response:
        state = health.check(sources)
        return json_response(200 if state.healthy else 503, state)

    return route
