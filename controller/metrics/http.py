"""The API's latency per route template, method and status class, as one ASGI middleware.

Labelled by the route's template (`/v1/jobs/{job_id}`), never the raw path: a caller cannot
make a series per path it invents (paths that match no route share `route="unmatched"`), and
methods outside HTTP's usual ones share `method="other"`. The time is to the answer's first
byte: a live event stream is fast to answer and then stays open for as long as it likes.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def request_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "fleettrace_http_request_duration_seconds",
        "Time from a request's arrival to its answer's first byte, in this API process.",
        labelnames=("route", "method", "status_class"),
        buckets=BUCKETS,
        registry=registry,
    )


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class LatencyMiddleware:
    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not status:
                status.append(int(message["status"]))
                self._observe(scope, status[0], time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            if not status:  # the server answers 500 for it
                self._observe(scope, 500, time.perf_counter() - began)
            raise

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope.get("method", "")
        self.histogram.labels(
            route=route_of(scope),
            method=method if method in METHODS else "other",
            status_class=f"{status // 100}xx",
        ).observe(seconds)
