"""`GET /metrics` for Prometheus (a viewer token), and the open port `serve` may add."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import start_http_server

from controller.api.deps import Viewer
from controller.api.responses import AUTHENTICATED
from controller.metrics.registry import Metrics

log = logging.getLogger(__name__)
router = APIRouter(tags=["meta"], responses=AUTHENTICATED)
TEXT = {"text/plain": {"schema": {"type": "string"}}}


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text (or OpenMetrics if asked)", "content": TEXT}},
)
async def metrics(request: Request, _: Viewer) -> Response:
    """The controller's own metrics: fleet state, ingest lag, latencies (Prometheus text)."""
    found: Metrics = request.app.state.metrics
    accept = request.headers.get("accept", "")
    body, content_type = await anyio.to_thread.run_sync(
        found.exposition, accept, limiter=found.encoders
    )
    return Response(content=body, media_type=content_type)


def serve_open_port(found: Metrics, *, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """The same metrics without a token on their own address (e.g. a port only the Prometheus
    network reaches); raises OSError when it cannot listen."""
    server, thread = start_http_server(port, addr=host, registry=found.registry)
    log.info("metrics open on http://%s:%d/metrics (no token)", host, port)
    return server, thread
